"""The report's section for many checkpoints: one slider over every checkpoint, drawn in the page.

The GW matrix and the groups of the checkpoint the slider points at are drawn on a canvas from
data embedded in the page (JSON, values to 4 significant digits, upper triangles only), next to
the group-boundary timeline of all checkpoints (the current one outlined); hovering a cell shows
its two layers and value. No external resource (no CDN): the page works offline, like the rest
of ``report.html``. Size: about 8 bytes per matrix cell of the upper triangles, so 100
checkpoints × 32 layers (49,600 values) add about 0.5 MB (:data:`SIZE_BOUND` is what the tests
hold the whole report to).
"""
from __future__ import annotations

import json

import numpy as np

SIZE_BOUND = 3 * 2**20
"""report.html stays below this many bytes for 100 checkpoints of 32 layers (tests check it)."""

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]

_JS = r"""
(function(){
const D=JSON.parse(document.getElementById('sweep-data').textContent);
const slider=document.getElementById('sweep-slider'), label=document.getElementById('sweep-label');
const mat=document.getElementById('sweep-matrix'), tl=document.getElementById('sweep-timeline');
const hover=document.getElementById('sweep-hover'), groups=document.getElementById('sweep-groups');
const stops=[[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]];
function color(t){t=Math.max(0,Math.min(1,t))*(stops.length-1);const k=Math.min(Math.floor(t),stops.length-2),f=t-k;
 const c=stops[k].map((v,i)=>Math.round(v+f*(stops[k+1][i]-v)));return 'rgb('+c.join(',')+')';}
function names(c){return D.name_sets[D.layers[c]];}
function value(c,i,j){if(i===j)return 0;const L=names(c).length;if(i>j){const t=i;i=j;j=t;}
 return D.gw[c][i*L-i*(i+1)/2+(j-i-1)];}
function draw(k){const c=D.checkpoints[k],L=names(c).length,cell=Math.floor(mat.width/L);
 const ctx=mat.getContext('2d');ctx.clearRect(0,0,mat.width,mat.height);
 for(let i=0;i<L;i++)for(let j=0;j<L;j++){ctx.fillStyle=color(value(c,i,j)/D.vmax);ctx.fillRect(j*cell,i*cell,cell,cell);}
 const lab=D.labels[c];ctx.strokeStyle='#fff';ctx.lineWidth=2;
 for(let i=1;i<L;i++)if(lab[i]!==lab[i-1]){ctx.beginPath();ctx.moveTo(i*cell,0);ctx.lineTo(i*cell,L*cell);
  ctx.moveTo(0,i*cell);ctx.lineTo(L*cell,i*cell);ctx.stroke();}
 label.textContent=c+(D.steps[c]!==null&&D.steps[c]!==undefined?' (step '+D.steps[c]+')':'');
 mat.dataset.checkpoint=c;
 const by={};names(c).forEach((n,i)=>{(by[lab[i]]=by[lab[i]]||[]).push(n);});
 groups.innerHTML='';Object.keys(by).forEach(g=>{const li=document.createElement('li');
  li.innerHTML='<span class="swatch" style="background:'+D.palette[g%D.palette.length]+'"></span>';
  li.appendChild(document.createTextNode('group '+(+g+1)+': '+by[g].join(', ')));groups.appendChild(li);});
 drawTimeline(k);}
function drawTimeline(k){const ctx=tl.getContext('2d'),C=D.checkpoints.length,W=D.max_layers;
 const h=Math.max(2,Math.floor(tl.height/C)),w=Math.floor(tl.width/W);ctx.clearRect(0,0,tl.width,tl.height);
 D.checkpoints.forEach((c,r)=>{D.labels[c].forEach((g,i)=>{ctx.fillStyle=D.palette[g%D.palette.length];ctx.fillRect(i*w,r*h,w-1,h);});});
 ctx.strokeStyle='#000';ctx.lineWidth=2;ctx.strokeRect(1,k*h,W*w-2,h);}
mat.addEventListener('mousemove',e=>{const c=D.checkpoints[+slider.value],L=names(c).length;
 const r=mat.getBoundingClientRect(),cell=mat.width/L*(r.width/mat.width);
 const j=Math.floor((e.clientX-r.left)/cell),i=Math.floor((e.clientY-r.top)/cell);
 if(i<0||j<0||i>=L||j>=L){hover.textContent='';return;}
 hover.textContent=names(c)[i]+' \u00d7 '+names(c)[j]+': GW '+value(c,i,j).toPrecision(4);});
mat.addEventListener('mouseleave',()=>{hover.textContent='';});
tl.addEventListener('click',e=>{const r=tl.getBoundingClientRect(),C=D.checkpoints.length;
 const h=Math.max(2,Math.floor(tl.height/C))*(r.height/tl.height);slider.value=Math.min(C-1,Math.floor((e.clientY-r.top)/h));draw(+slider.value);});
slider.addEventListener('input',()=>draw(+slider.value));
const m=/ckpt=(\d+)/.exec(location.hash);if(m)slider.value=Math.min(+m[1],D.checkpoints.length-1);
draw(+slider.value);
})();
"""


def _round(values: np.ndarray) -> list:
    return [float(f"{v:.4g}") for v in values]


def sweep_data(checkpoints: list, steps: dict, layers: dict, gw: dict, labels: dict) -> dict:
    """The page's data: per checkpoint the upper triangle of its GW matrix (row-major, i < j),
    its group label per layer, and its layer names (as an index into shared name lists)."""
    name_sets, layer_index = [], {}
    for c in checkpoints:
        names = list(layers[c])
        if names not in name_sets:
            name_sets.append(names)
        layer_index[c] = name_sets.index(names)
    vmax = max((float(np.max(gw[c])) for c in checkpoints if gw[c].size), default=1.0) or 1.0
    return {"checkpoints": list(checkpoints), "steps": {c: steps.get(c) for c in checkpoints},
            "name_sets": name_sets, "layers": layer_index,
            "gw": {c: _round(gw[c][np.triu_indices(len(layers[c]), 1)]) for c in checkpoints},
            "labels": {c: [int(x) for x in labels[c]] for c in checkpoints},
            "max_layers": max(len(layers[c]) for c in checkpoints), "vmax": vmax,
            "palette": PALETTE}


def sweep_section(checkpoints: list, steps: dict, layers: dict, gw: dict, labels: dict) -> str:
    """HTML of the slider section (canvas matrix, groups, timeline, hover), data and script inline."""
    data = json.dumps(sweep_data(checkpoints, steps, layers, gw, labels), separators=(",", ":"))
    data = data.replace("</", "<\\/")  # a layer name cannot close the script element
    C, L = len(checkpoints), max(len(layers[c]) for c in checkpoints)
    side = max(240, min(560, 16 * L))
    return (
        "<h2>Checkpoints</h2><p>Move the slider (or click a row of the timeline) to show a "
        "checkpoint's GW matrix and groups; hover a cell for its value. Colours of the matrix go "
        "from 0 (dark) to the largest GW value of the run (yellow); white lines are group "
        "boundaries. The timeline has one row per checkpoint in training order, one column per "
        "layer, coloured by group; the outlined row is the one shown.</p>"
        f"<p><input type='range' id='sweep-slider' min='0' max='{C - 1}' value='{C - 1}' step='1' "
        f"style='width:100%'> <b id='sweep-label'></b></p>"
        "<div style='display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start'>"
        f"<div><canvas id='sweep-matrix' width='{side}' height='{side}'></canvas>"
        "<div id='sweep-hover' class='meta' style='min-height:1.4em'></div>"
        "<ul id='sweep-groups' style='list-style:none;padding:0'></ul></div>"
        f"<div><canvas id='sweep-timeline' width='{max(160, 10 * L)}' "
        f"height='{max(120, min(800, 6 * C))}'></canvas></div></div>"
        f"<script type='application/json' id='sweep-data'>{data}</script>"
        f"<script>{_JS}</script>")
