"""Markdown tables of docs/results.md and docs/null_model.md, rendered from ``results.json`` alone.

Every table is a named block. :func:`blocks` renders all of them from ``meta`` and ``summary``
(so ``tests/test_results_docs.py`` can re-render them from docs/results.json and compare);
:func:`write_docs` replaces ``<!-- BEGIN name -->`` … ``<!-- END name -->`` in the docs.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from exp_summary import summarize  # noqa: F401 - experiments.py's entry point to the summary

DOCS = {"results.md": ("cost", "setup", "selection", "structure", "baselines", "solver", "strategy", "probes", "probes_minilm",
                       "compress_digits_mlp", "compress_modular_joint", "lm_prune", "minilm_prune", "lm_finetune"),
        "null_model.md": ("null_calibration", "null_gain", "demo")}
LABELS = {"planted": "planted two-regime MLP (control)", "digits_mlp": "digits, residual MLP",
          "digits_cnn": "digits, residual CNN", "modular_joint": "modular, joint", "modular_curriculum":
          "modular, curriculum", "minilm": "MiniLM (probe seeds)", "lm": "small GPT-2 (Botchan)"}
RULE_ORDER = ("groups", "gw_io", "cka_groups", "bi", "angular", "random")


def short(name: str) -> str:
    return (name.replace("blocks.", "").replace("block.", "").replace("encoder.layer.", "L")
            .replace("embeddings", "emb").replace("embed", "emb"))


def num(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}f}" if abs(x) >= 10 ** -digits or x == 0 else f"{x:.1e}"


def interval(mi: dict | None, digits: int = 3, sign: bool = False) -> str:
    if mi is None:
        return "–"
    f = f"{{:+.{digits}f}}" if sign else f"{{:.{digits}f}}"
    star = " *" if sign and mi.get("excludes_zero") else ""
    return f"{f.format(mi['mean'])} [{f.format(mi['low'])}, {f.format(mi['high'])}]{star}"


def p_list(ps) -> str:
    return ", ".join("–" if p is None else f"{p:.2g}" for p in ps)


def header(meta: dict, note: str = "") -> str:
    la = "/".join(f"{x:g}" for x in meta["load_average"])
    stages = [c for c in meta.get("stage_commits", []) if c != meta["commit"]]
    made = f"; its stages ran at commit {', '.join(f'`{c}`' for c in stages)}" if stages else ""
    return (f"_Generated from results.json of `{meta['command']}` at commit `{meta['commit']}`{made} "
            f"({meta['date']}; load average at the end {la}).{(' ' + note) if note else ''}_\n\n")


def table(head: list, rows: list) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]) + "\n"


def cost_block(meta, summ) -> str:
    families: dict = {}
    for name, cpu in meta["stage_cpu_s"].items():
        fam = name.split(":")[0]
        f = families.setdefault(fam, [0, 0.0, 0.0])
        f[0], f[1], f[2] = f[0] + 1, f[1] + cpu, f[2] + meta["stage_wall_s"][name]
    rows = [[fam, n, f"{cpu / 60:.1f}", f"{wall / 60:.1f}"] for fam, (n, cpu, wall) in families.items()]
    total_cpu = sum(f[1] for f in families.values())
    rows.append(["**all**", sum(f[0] for f in families.values()), f"**{total_cpu / 60:.1f}**",
                 f"{sum(f[2] for f in families.values()) / 60:.1f}"])
    span = meta.get("stages_wall_span_s")
    span = (f" From the first stage's start to the last one's end (pauses between invocations included): "
            f"{span / 60:.0f} wall minutes.") if span else ""
    return header(meta, "CPU minutes of each stage family (one thread per stage) and the wall minutes its stages "
                        "ran, summed over stages; `--jobs 2` runs two stages at once." + span) + table(
        ["stages", "count", "CPU minutes", "stage wall minutes (summed)"], rows)


def setup_block(meta, summ) -> str:
    s = meta["settings"]
    rows = [["training seeds per toy setup / MiniLM probe seeds / LM seeds", f"{s['seeds']} / {s['minilm']['seeds']} / {s['seeds']}"],
            ["GW probe (toys / MiniLM / LM)", f"{s['n_probe']} held-out inputs / {s['minilm']['n_probe']} sentences / "
                                              f"{s['lm']['n_probe']} train-split sentences"],
            ["block-structure test", f"α = {s['alpha']}, B = {s['null_draws']} null draws (contiguous groups, k auto)"],
            ["solver dependence", f"wide: gwray's default starts with entropic and random:{s['wide_random']} added "
                                  "(another seed), every end polished; shuffled: the same on rows shuffled per layer, "
                                  "unaligned (no identity or mixed start)"],
            ["toy compression", f"k ∈ {s['toy_ks']}, {s['heal_steps']} healing steps × {s['heal_seeds']} healing seeds, "
                                f"random = {s['random_draws']} draws"],
            ["LM pruning", f"K ∈ {s['lm']['drops']}, {s['lm']['heal_steps']} healing steps × {s['heal_seeds']} seeds, "
                           f"{s['lm']['n_eval']} test sentences, random = {s['random_draws']} draws"],
            ["LM fine-tuning", f"{s['lm']['ft_steps']} steps × {s['heal_seeds']} seeds, {s['lm']['ft_eval']} held-out "
                               f"sentences per domain, random = {s['random_draws']} draws"],
            ["MiniLM pruning", f"K ∈ {s['minilm']['drops']}, {s['minilm']['n_eval']} held-out sentences, "
                               f"random = {s['random_draws']} draws"]]
    return header(meta) + table(["", "size"], rows)


def selection_block(meta, summ) -> str:
    rows = [[LABELS[k], ", ".join(f"{c['weight_decay']:g}: {c['val']:.3f}" for c in v["candidates"]), f"{v['chosen']:g}"]
            for k, v in summ["selection"].items()]
    return header(meta, "Validation accuracy (seed 0) per weight decay; the test split is not used.") + table(
        ["setup", "weight decay: validation accuracy", "chosen"], rows)


def structure_block(meta, summ) -> str:
    rows = []
    for key, e in summ["structure"].items():
        if key == "strategies":
            continue
        g = e["groupings"]["gw"]
        v = g["verdict"]
        if "accuracy" in e:
            a = e["accuracy"]["test"]
            perf = f"{a['mean']:.3f} ({min(a['values']):.3f}–{max(a['values']):.3f})"
        elif "perplexity" in e:
            a = e["perplexity"]
            perf = f"ppl {a['mean']:.0f} ({min(a['values']):.0f}–{max(a['values']):.0f})"
        else:
            perf = "–"
        cands = " · ".join(",".join(short(b) for b in bs) or "–" for bs in g["candidate_boundaries"])
        agree = g.get("agreement")
        ari = f"{agree['mean']:.2f} [{agree['interval'][0]:.2f}, {agree['interval'][1]:.2f}]" if agree else "–"
        rows.append([LABELS[key], len(e["seeds"]), len(e["names"]), perf, p_list(g["p"]),
                     f"{v['significant']}/{v['seeds']}", "**yes**" if v["established"] else "no", cands, ari])
    return header(meta, "Test accuracy on the held-out split (LM: held-out perplexity). Candidate boundaries: "
                        "after which layers the contiguous grouping cuts on each seed, tested or not.") + table(
        ["net", "seeds", "layers", "test accuracy", "GW: p per seed", "p < α", "structure established (≥ 4/5)",
         "candidate boundaries per seed", "between-seed ARI [95 % CI]"], rows)


def baselines_block(meta, summ) -> str:
    rows = []
    for key, e in summ["structure"].items():
        if key == "strategies":
            continue
        cells = [LABELS[key], f"{e['groupings']['gw']['verdict']['significant']}/{len(e['seeds'])}"]
        for kind in ("cka", "rsa", "identity"):
            cells += [f"{e['groupings'][kind]['verdict']['significant']}/{len(e['seeds'])}",
                      interval(e["ari_vs_gw"][kind], 2)]
        rows.append(cells)
    return header(meta, "p < α counts per seed; ARI of each baseline's candidate grouping with GW's, mean over "
                        "seeds [95 % t CI].") + table(
        ["net", "GW p < α", "CKA p < α", "ARI(CKA, GW)", "RSA p < α", "ARI(RSA, GW)", "identity p < α",
         "ARI(identity, GW)"], rows)


def solver_block(meta, summ) -> str:
    rows = []
    for key, e in summ["structure"].items():
        if key == "strategies":
            continue
        sv, gr = e["solver"], e["groupings"]
        sig = " / ".join(f"{gr[k]['verdict']['significant']}" for k in ("gw", "gw_shuffled", "gw_wide", "gw_best"))
        rows.append([LABELS[key], f"{sv['shuffled']['rel_median']:+.1%} ({sv['shuffled']['rel_min']:+.1%} … "
                                  f"{sv['shuffled']['rel_max']:+.1%})",
                     f"{sv['wide']['rel_median']:+.1%} ({sv['wide']['rel_min']:+.1%} … {sv['wide']['rel_max']:+.1%})",
                     sig + f" of {len(e['seeds'])}",
                     " / ".join(f"{e['ari_vs_gw'][k]['mean']:.2f}" for k in ("gw_shuffled", "gw_wide", "gw_best")),
                     f"{e['ari_vs_cka']['gw']['mean']:.2f} → {e['ari_vs_cka']['gw_best']['mean']:.2f}"])
    return header(meta, "Value change relative to the default solve: median over pairs and seeds (min … max). "
                        "\"best\" = the lowest feasible value of the three solves for each pair.") + table(
        ["net", "shuffled, unaligned: value change", "wide search: value change",
         "p < α: default / shuffled / wide / best", "candidate ARI vs default: shuffled / wide / best",
         "ARI(GW, CKA): default → best"], rows)


def strategy_block(meta, summ) -> str:
    st = summ["structure"]
    if "strategies" not in st:
        return header(meta) + "(not computed)\n"
    rows = []
    for key in ("modular_joint", "modular_curriculum"):
        e = st[key]
        a, ag = e["accuracy"]["test"], e["groupings"]["gw"]["agreement"]
        rows.append([LABELS[key], f"{a['mean']:.3f} ({min(a['values']):.3f}–{max(a['values']):.3f})",
                     f"{e['groupings']['gw']['verdict']['significant']}/{len(e['seeds'])}",
                     f"{ag['mean']:.2f} [{ag['interval'][0]:.2f}, {ag['interval'][1]:.2f}]"])
    x = st["strategies"]
    rows.append(["joint × curriculum (every pair of seeds)", "", "", f"{x['mean']:.2f} [{x['interval'][0]:.2f}, "
                                                                     f"{x['interval'][1]:.2f}]"])
    return header(meta) + table(["strategy", "test accuracy", "GW p < α", "ARI of candidate groupings [95 % CI]"], rows)


def probes_block(meta, summ) -> str:
    rows = []
    for key, e in summ["probes"].items():
        if key == "minilm":
            continue
        for target, t in e.items():
            rows.append([LABELS[key], target, f"{t['mean'][0]:.2f}", f"{t['mean'][-1]:.2f}",
                         interval(t["gain_first_group"], 2, sign=True), interval(t["gain_after"], 2, sign=True)])
    return header(meta, "Held-out accuracy of a linear probe (ridge classifier on standardised features, fit on "
                        "the training split), mean over seeds. Gains: inside the first candidate group (its last "
                        "layer minus the embedding) and after it (last layer minus that), mean [95 % CI]; * = "
                        "the interval excludes 0.") + table(
        ["net", "target", "embedding", "last layer", "gain in group 1", "gain after group 1"], rows)


def probes_minilm_block(meta, summ) -> str:
    e = summ["probes"].get("minilm")
    if not e:
        return header(meta) + "(not computed)\n"
    targets = list(e["probes"])
    rows = [[short(n)] + [f"{e['probes'][t][i]:.3f}" for t in targets] for i, n in enumerate(e["names"])]
    rows.append(["chance (majority)"] + [f"{e['chance'][t]:.3f}" for t in targets])
    return header(meta, f"{e['n_train']} train / {e['n_test']} test sentences (CRC-32 split).") + table(
        ["layer", *targets], rows)


def _compress(meta, c: dict, metrics: tuple, note: str, digits: int, diff_label: str = "paired difference",
              diff_digits: int | None = None) -> str:
    out = header(meta, note)
    ks = list(c[metrics[0]])
    rules = [r for r in RULE_ORDER if r in c[metrics[0]][ks[0]]["rules"]]
    head = ["rule"] + [f"k={k}: {m}" for k in ks for m in metrics]
    rows = [[r] + [num(c[m][k]["rules"][r]["mean"], digits) for k in ks for m in metrics] for r in rules]
    out += table(head, rows) + "\n"
    diffs = list(c[metrics[0]][ks[0]]["diffs"])
    d_digits = digits if diff_digits is None else diff_digits
    rows = [[d] + [interval(c[m][k]["diffs"][d], d_digits, sign=True) for k in ks for m in metrics] for d in diffs]
    return out + table([diff_label] + head[1:], rows)


def compress_block(setup):
    def render(meta, summ):
        c = summ["compression"].get(setup)
        if not c:
            return header(meta) + "(not computed)\n"
        u = c["unpruned"]
        return _compress(meta, c, ("accuracy", "healed"),
                         f"Test accuracy over {c['models']} model seeds (unpruned {u['accuracy']['mean']:.3f}, healed "
                         f"{u['healed']['mean']:.3f}). Paired differences: mean over model seeds [95 % t CI]; "
                         "* = the interval excludes 0.", 3)
    return render


def lm_prune_block(meta, summ) -> str:
    c = summ["compression"].get("lm")
    if not c:
        return header(meta) + "(not computed)\n"
    u = c["unpruned"]
    return _compress(meta, c, ("perplexity", "healed"),
                     f"Held-out perplexity over {c['models']} LM seeds, lower is better (unpruned "
                     f"{u['perplexity']['mean']:.1f}, after the same healing {u['healed']['mean']:.1f}). Paired "
                     "differences of 100 · ln(perplexity) (≈ % change; the LMs' perplexities differ by seed) "
                     "[95 % t CI]; * = the interval excludes 0.", 2,
                     diff_label="paired difference, 100 · ln perplexity", diff_digits=1)


def minilm_prune_block(meta, summ) -> str:
    c = summ["compression"].get("minilm")
    if not c:
        return header(meta) + "(not computed)\n"
    blocks = " · ".join(f"K={k}: " + ", ".join(f"{rule} {'/'.join(str(list(b)) for b in bs)}" for rule, bs in e["blocks"].items())
                        for k, e in c["knn10_kept"].items())
    return _compress(meta, c, ("knn10_kept",), f"Share of each held-out sentence's 10 nearest neighbours kept, higher "
                     f"is better; a rule's score is the mean of its choices on the {c['probe_seeds']} probe seeds, "
                     "random the mean of the draws. One pretrained model: intervals are 95 % t intervals over the "
                     f"{c['n_eval']} held-out sentences; * = the interval excludes 0. Blocks dropped: {blocks}.", 3)


def lm_finetune_block(meta, summ) -> str:
    f = summ["finetune"]
    if not f:
        return header(meta) + "(not computed)\n"
    groups = " · ".join("; ".join(f"{b[0]}-{b[-1]}" if len(b) > 1 else str(b[0]) for b in gs) for gs in f["groups"])
    rows = [[c, interval(v["domain_loss"]), interval(v["botchan_loss"])] for c, v in f["conditions"].items()]
    out = header(meta, f"Held-out loss (nats per token) over {f['models']} LM seeds [95 % t CI]. GW block groups "
                       f"per seed: {groups}.") + table(["blocks trained", "docstring loss", "Botchan loss"], rows)
    rows = [[d, interval(v["domain_loss"], 3, True), interval(v["botchan_loss"], 3, True)] for d, v in f["diffs"].items()]
    return out + "\n" + table(["paired difference", "docstring loss", "Botchan loss"], rows)


def null_calibration_block(meta, summ) -> str:
    rows = []
    for m, e in summ["null"].items():
        syn, nets = e.get("synthetic"), e.get("nets")
        if not syn or not nets:
            continue
        pw = " / ".join(f"{a}/{b}" for a, b in syn["power"].values())
        c = syn["cost"]
        rows.append([m, f"{syn['false_positives']}/{syn['cases']}",
                     f"{nets['heldout']}/{nets['counts']['heldout']}, {nets['deep']}/{nets['counts']['deep']}, "
                     f"{nets['gpt2']}/{nets['counts']['gpt2']}", pw,
                     f"{c['null']['test_cpu_s']:.2f} s ({c['null']['draws']} draws) / {c['planted']['test_cpu_s']:.2f} s "
                     f"(×{c['planted']['test_cpu_s'] / max(c['planted']['partition_cpu_s'], 1e-9):.0f})"])
    fam = next(iter(summ["null"].values()))["synthetic"]
    return header(meta, f"B = {fam['draws']}, α = 0.05; CPU seconds, one BLAS thread, on a shared machine.") + table(
        ["method", "false positives, synthetic drift", "false positives: drift nets 9 layers (held out), 17 layers, "
         "random GPT-2", "power: " + " / ".join(fam["power"]), f"one test at L = {fam['cost_L']}: null / planted"],
        rows)


def null_gain_block(meta, summ) -> str:
    methods = [m for m, e in summ["null"].items() if "nets" in e]
    if not methods:
        return header(meta) + "(not computed)\n"
    e0 = summ["null"][methods[0]]["nets"]
    gains = list(e0["calibration"])
    rows = [[f"gain {g}" + (" (even steps)" if float(g) == 0 else "") + f", {e0['counts']['calibration']} nets"] +
            [str(summ["null"][m]["nets"]["calibration"].get(g, "–")) for m in methods] for g in gains]
    return header(meta, f"Nets significant at α = 0.05 (B = {e0['draws']}) on the calibration set (9 layers, seeds "
                        "0…); expected under a calibrated test: 5 % of the nets.") + table(["null", *methods], rows)


def demo_block(meta, summ) -> str:
    d = summ.get("demo")
    if not d:
        return header(meta) + "(not computed)\n"
    lines = [f"- **{run['name']}** ({c['layers']} layers): {c['headline']}" + (f"; {c['power']}" if c.get("power") else "")
             for run in d for c in run["checkpoints"]]
    return header(meta) + "\n".join(lines) + "\n"


RENDER = {"cost": cost_block, "setup": setup_block, "selection": selection_block, "structure": structure_block,
          "baselines": baselines_block, "solver": solver_block, "strategy": strategy_block, "probes": probes_block,
          "probes_minilm": probes_minilm_block, "compress_digits_mlp": compress_block("digits_mlp"),
          "compress_modular_joint": compress_block("modular_joint"), "lm_prune": lm_prune_block,
          "minilm_prune": minilm_prune_block, "lm_finetune": lm_finetune_block,
          "null_calibration": null_calibration_block, "null_gain": null_gain_block, "demo": demo_block}


def blocks(meta: dict, summ: dict) -> dict:
    """Every named table block as markdown (a block whose numbers are missing says so)."""
    out = {}
    for name, fn in RENDER.items():
        try:
            out[name] = fn(meta, summ)
        except (KeyError, StopIteration, IndexError):
            out[name] = header(meta) + "(not computed)\n"
    return out


BLOCK_RE = re.compile(r"(<!-- BEGIN (\w+) -->\n).*?(<!-- END \2 -->)", re.S)


def fill(text: str, rendered: dict) -> str:
    """``text`` with every ``<!-- BEGIN name -->`` … ``<!-- END name -->`` block replaced."""
    return BLOCK_RE.sub(lambda m: m.group(1) + rendered[m.group(2)] + m.group(3), text)


def write_outputs(results: dict, out: Path) -> None:
    import exp_figures

    rendered = blocks(results["meta"], results["summary"])
    (out / "tables.md").write_text("".join(f"## {n}\n\n{md}\n" for n, md in rendered.items()))
    exp_figures.draw(results, out / "figures")


def write_docs(results: dict, out: Path, docs: Path) -> None:
    rendered = blocks(results["meta"], results["summary"])
    for doc, names in DOCS.items():
        path = docs / doc
        text = path.read_text()
        missing = [n for n in names if f"<!-- BEGIN {n} -->" not in text]
        if missing:
            raise SystemExit(f"{path}: no block {missing[0]!r} to fill")
        _write(path, fill(text, rendered))
    (docs / "figures").mkdir(exist_ok=True)
    for png in (out / "figures").glob("*.png"):
        shutil.copy2(png, docs / "figures" / png.name)
    lean = {"meta": results["meta"], "summary": results["summary"]}
    _write(docs / "results.json", json.dumps(lean, indent=1) + "\n")


def _write(path: Path, text: str) -> None:
    """Write atomically (a temp file, then rename): an interrupted run leaves the old doc whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
