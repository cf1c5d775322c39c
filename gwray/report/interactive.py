"""The report's section for many checkpoints: one slider over every checkpoint, drawn in the page.

The GW matrix and the groups of the checkpoint the slider points at are drawn on a canvas from
data embedded in the page (JSON, values to 4 significant digits, upper triangles only), its rows
and columns labelled with layer names (every few layers when there are many), next to the
group-boundary timeline of all checkpoints (rows labelled with checkpoint ids, columns with layer
names, a black bar at each boundary, the current row outlined); hovering a matrix cell shows its
two layers and value, a timeline cell its checkpoint, layer and group. No external resource (no
CDN): the page works offline, like the rest of ``report.html``. Size: about 8 bytes per matrix
cell of the upper triangles, so 100 checkpoints × 80 layers (316,000 values) add about 2.5 MB
(:data:`SIZE_BOUND` is what the tests hold the whole report to).
"""
from __future__ import annotations

import json

import numpy as np

SIZE_BOUND = 10 * 2**20
"""report.html stays below this many bytes for 100 checkpoints of 80 layers (the tests check it)."""

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]

_JS = r"""
(function(){
const D=JSON.parse(document.getElementById('sweep-data').textContent);
const slider=document.getElementById('sweep-slider'), label=document.getElementById('sweep-label');
const mat=document.getElementById('sweep-matrix'), tl=document.getElementById('sweep-timeline');
const hover=document.getElementById('sweep-hover'), groups=document.getElementById('sweep-groups');
const stops=[[68,1,84],[59,82,139],[33,145,140],[94,201,98],[253,231,37]];
const M=D.margin, TL=D.tl_left, TT=D.tl_top, FONT='10px sans-serif';
function color(t){t=Math.max(0,Math.min(1,t))*(stops.length-1);const k=Math.min(Math.floor(t),stops.length-2),f=t-k;
 const c=stops[k].map((v,i)=>Math.round(v+f*(stops[k+1][i]-v)));return 'rgb('+c.join(',')+')';}
function names(c){return D.name_sets[D.layers[c]];}
function value(c,i,j){if(i===j)return 0;const L=names(c).length;if(i>j){const t=i;i=j;j=t;}
 return D.gw[c][i*L-i*(i+1)/2+(j-i-1)];}
function fit(ctx,s,room){if(ctx.measureText(s).width<=room)return s;  // keep the end: it numbers the layer
 while(s.length>1&&ctx.measureText('\u2026'+s).width>room)s=s.slice(1);return '\u2026'+s;}
function every(count,px){return Math.max(1,Math.ceil(12/Math.max(px,1)),Math.ceil(count/40));}
function cellOf(c){return Math.floor((mat.width-M)/names(c).length);}
function draw(k){const c=D.checkpoints[k],L=names(c).length,cell=cellOf(c),n=names(c);
 const ctx=mat.getContext('2d');ctx.clearRect(0,0,mat.width,mat.height);
 for(let i=0;i<L;i++)for(let j=0;j<L;j++){ctx.fillStyle=color(value(c,i,j)/D.vmax);ctx.fillRect(M+j*cell,M+i*cell,cell,cell);}
 const lab=D.labels[c];ctx.strokeStyle='#fff';ctx.lineWidth=2;
 for(let i=1;i<L;i++)if(lab[i]!==lab[i-1]){ctx.beginPath();ctx.moveTo(M+i*cell,M);ctx.lineTo(M+i*cell,M+L*cell);
  ctx.moveTo(M,M+i*cell);ctx.lineTo(M+L*cell,M+i*cell);ctx.stroke();}
 ctx.fillStyle='#333';ctx.font=FONT;ctx.textBaseline='middle';const step=every(L,cell);
 for(let i=0;i<L;i+=step){ctx.textAlign='right';ctx.fillText(fit(ctx,n[i],M-4),M-4,M+(i+0.5)*cell);
  ctx.save();ctx.translate(M+(i+0.5)*cell,M-4);ctx.rotate(-Math.PI/2);ctx.textAlign='left';
  ctx.fillText(fit(ctx,n[i],M-4),0,0);ctx.restore();}
 label.textContent=c+(D.steps[c]!==null&&D.steps[c]!==undefined?' (step '+D.steps[c]+')':'');
 mat.dataset.checkpoint=c;
 const by={};lab.forEach((g,i)=>{(by[g]=by[g]||[]).push(i);});
 groups.innerHTML='';Object.keys(by).forEach(g=>{const li=document.createElement('li'),ix=by[g];
  li.innerHTML='<span class="swatch" style="background:'+D.palette[g%D.palette.length]+'"></span>';
  const run=ix.length>2&&ix[ix.length-1]-ix[0]===ix.length-1;  // contiguous: first – last
  li.appendChild(document.createTextNode('group '+(+g+1)+': '+(run?n[ix[0]]+' \u2013 '+n[ix[ix.length-1]]
   +' ('+ix.length+' layers)':ix.map(i=>n[i]).join(', '))));groups.appendChild(li);});
 drawTimeline(k);}
function rowH(){return Math.max(2,Math.floor((tl.height-TT)/D.checkpoints.length));}
function colW(){return Math.max(2,Math.floor((tl.width-TL)/D.max_layers));}
function drawTimeline(k){const ctx=tl.getContext('2d'),C=D.checkpoints.length,W=D.max_layers,h=rowH(),w=colW();
 ctx.clearRect(0,0,tl.width,tl.height);
 D.checkpoints.forEach((c,r)=>{const lab=D.labels[c];lab.forEach((g,i)=>{ctx.fillStyle=D.palette[g%D.palette.length];
  ctx.fillRect(TL+i*w,TT+r*h,w,h);});ctx.fillStyle='#000';  // a black bar at every group boundary
  for(let i=1;i<lab.length;i++)if(lab[i]!==lab[i-1])ctx.fillRect(TL+i*w-1,TT+r*h,2,h);});
 ctx.fillStyle='#333';ctx.font=FONT;ctx.textBaseline='middle';ctx.textAlign='right';
 const rs=every(C,h);for(let r=0;r<C;r+=rs)ctx.fillText(fit(ctx,D.checkpoints[r],TL-4),TL-4,TT+(r+0.5)*h);
 const deep=D.checkpoints.reduce((a,c)=>names(c).length>names(a).length?c:a),cs=every(W,w);
 for(let i=0;i<W;i+=cs){ctx.save();ctx.translate(TL+(i+0.5)*w,TT-4);ctx.rotate(-Math.PI/2);ctx.textAlign='left';
  ctx.fillText(fit(ctx,names(deep)[i],TT-4),0,0);ctx.restore();}
 ctx.strokeStyle='#000';ctx.lineWidth=2;ctx.strokeRect(TL+1,TT+k*h,W*w-2,h);}
function at(canvas,e){const r=canvas.getBoundingClientRect();
 return [(e.clientX-r.left)*canvas.width/r.width,(e.clientY-r.top)*canvas.height/r.height];}
mat.addEventListener('mousemove',e=>{const c=D.checkpoints[+slider.value],L=names(c).length,cell=cellOf(c);
 const [x,y]=at(mat,e),j=Math.floor((x-M)/cell),i=Math.floor((y-M)/cell);
 if(x<M||y<M||i>=L||j>=L){hover.textContent='';return;}
 hover.textContent=names(c)[i]+' \u00d7 '+names(c)[j]+': GW '+value(c,i,j).toPrecision(4);});
mat.addEventListener('mouseleave',()=>{hover.textContent='';});
function rowAt(e){const [x,y]=at(tl,e),r=Math.floor((y-TT)/rowH()),i=Math.floor((x-TL)/colW());
 return y<TT||r>=D.checkpoints.length?null:[r,x<TL?null:i];}
tl.addEventListener('mousemove',e=>{const ri=rowAt(e);if(!ri){hover.textContent='';return;}
 const c=D.checkpoints[ri[0]],lab=D.labels[c],i=ri[1];
 hover.textContent=c+(i!==null&&i<lab.length?', '+names(c)[i]+': group '+(lab[i]+1):'');});
tl.addEventListener('click',e=>{const ri=rowAt(e);if(ri){slider.value=ri[0];draw(ri[0]);}});
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
    longest = max(len(n) for names in name_sets for n in names)
    return {"checkpoints": list(checkpoints), "steps": {c: steps.get(c) for c in checkpoints},
            "name_sets": name_sets, "layers": layer_index,
            "gw": {c: _round(gw[c][np.triu_indices(len(layers[c]), 1)]) for c in checkpoints},
            "labels": {c: [int(x) for x in labels[c]] for c in checkpoints},
            "max_layers": max(len(layers[c]) for c in checkpoints), "vmax": vmax,
            "palette": PALETTE,
            # canvas pixels for the names (10 px font, ~6 px a character; longer ones are cut)
            "margin": _margin(longest), "tl_top": _margin(longest),
            "tl_left": _margin(max(len(c) for c in checkpoints))}


def _margin(chars: int) -> int:
    return min(110, 10 + 6 * chars)


def sweep_section(checkpoints: list, steps: dict, layers: dict, gw: dict, labels: dict) -> str:
    """HTML of the slider section (canvas matrix, groups, timeline, hover), data and script inline."""
    page = sweep_data(checkpoints, steps, layers, gw, labels)
    data = json.dumps(page, separators=(",", ":")).replace("</", "<\\/")  # a name cannot end the script
    C, L = len(checkpoints), max(len(layers[c]) for c in checkpoints)
    side = page["margin"] + max(240, min(560, 16 * L))
    return (
        "<h2>Checkpoints</h2><p>Move the slider (or click a row of the timeline) to show a "
        "checkpoint's GW matrix and groups; hover a cell of the matrix for its layers and value, "
        "a cell of the timeline for its checkpoint, layer and group. Colours of the matrix go "
        "from 0 (dark) to the largest GW value of the run (yellow); white lines are group "
        "boundaries; layer names label the rows and columns (every few layers when there are "
        "many). The timeline has one row per checkpoint in training order, one column per "
        "layer, coloured by group, a black bar at each group boundary; the outlined row is the "
        "one shown.</p>"
        f"<p><input type='range' id='sweep-slider' min='0' max='{C - 1}' value='{C - 1}' step='1' "
        f"style='width:100%'> <b id='sweep-label'></b></p>"
        "<div style='display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start'>"
        f"<div><canvas id='sweep-matrix' width='{side}' height='{side}'></canvas>"
        "<div id='sweep-hover' class='meta' style='min-height:1.4em'></div>"
        "<ul id='sweep-groups' style='list-style:none;padding:0'></ul></div>"
        f"<div><canvas id='sweep-timeline' width='{page['tl_left'] + max(160, 10 * L)}' "
        f"height='{page['tl_top'] + max(120, min(800, 6 * C)) + 6}'></canvas></div></div>"
        f"<script type='application/json' id='sweep-data'>{data}</script>"
        f"<script>{_JS}</script>")
