"""``speed.json`` and ``speed.md``: the results as written, and the markdown table with its notes."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_results(result: dict[str, Any], out: Path) -> None:
    from ditq.artifacts import write_json

    write_json(out / "speed.json", result)
    (out / "speed.md").write_text(format_markdown(result))


def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MB"


def _ms(s: dict[str, Any]) -> str:
    return f"{s['median_ms']:.2f} ({s['p10_ms']:.2f}–{s['p90_ms']:.2f})"


def _r(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    cfg = result["config"]
    lines = ["# ditq bench speed", "",
             f"{m['processor'] or m['machine']}, {m['cpu_count']} CPUs (AVX2 {m['avx2']}, VNNI "
             f"{m['avx512_vnni'] or m['avx_vnni']}), GPU: {m['cuda'] or 'none'}; torch {m['torch']}, onnxruntime "
             f"{m['onnxruntime']}. Threads {cfg['threads']}, ORT spinning {'on' if cfg['spinning'] else 'off'}, "
             f"{cfg['warmup']} warm-up + {cfg['repeats']} repeats, FP and INT8 interleaved. Load average at start: "
             f"{m['load_avg_start']}.", "",
             "Times: median (p10–p90) wall ms of one transformer forward. `CPU ratio`: ratio of median process CPU "
             "time (less sensitive to other processes on the machine when spinning is off).", "",
             "| model | params | tokens | backend | batch | FP ms | INT8 ms | INT8/FP | CPU ratio | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes: list[str] = []
    for e in result["models"]:
        for b in e["backends"]:
            label = b["backend"] + (f" ({b['device']}, {b['dtype']})" if b["backend"] == "torch-int8" else "")
            for row in b["rows"]:
                lines.append(f"| {e['name']} | {e['params'] / 1e6:.1f}M | {e['tokens']} | {label} | {row['batch']} | "
                             f"{_ms(row['fp'])} | {_ms(row['int8'])} | {_r(row['ratio'])} | {_r(row['ratio_cpu'])} | "
                             f"{row['int8']['load_before']}–{row['int8']['load_after']} |")
        calib = e["calibration"]
        notes.append(f"**{e['name']}** ({e['weights']} weights{'; ' + e['note'] if e['note'] else ''}): "
                     f"hidden {e['hidden']}, {e['layers']} layers; recipe {calib['method']} with {calib['groups']} "
                     f"groups ({calib['seconds']} s).")
        for b in e["backends"]:
            if b["backend"] == "onnxruntime":
                f, s, mem = b["fusion"]["int8"], b["sizes"], b["memory"]
                notes.append(
                    f"- onnxruntime: {f['fused']} of {f['quantized_linears']} quantized GEMMs fused into integer "
                    f"kernels ({', '.join(f'{k} {v}' for k, v in f['fused_ops'].items()) or 'none'}), "
                    f"{f['unfused']} left as DequantizeLinear→float GEMM, {f['float_gemms']} float GEMMs "
                    f"(attention, embedders, adaLN), {f['quantize_nodes']} QuantizeLinear. Sizes: FP32 graph "
                    f"{_mb(s['fp32']['total_bytes'])}, INT8 group graph {_mb(s['int8_group']['total_bytes'])}, "
                    f"directory ({s['groups']} groups + reference) {_mb(s['directory_bytes'])}. Process RSS "
                    f"growth (fresh process; session + one run at batch {mem['fp']['batch']}; peak): FP32 "
                    f"{_mb(mem['fp']['session_rss_bytes'])} + {_mb(mem['fp']['run_rss_bytes'])}; peak "
                    f"{_mb(mem['fp']['peak_rss_bytes'])}, INT8 {_mb(mem['int8']['session_rss_bytes'])} + "
                    f"{_mb(mem['int8']['run_rss_bytes'])}; peak {_mb(mem['int8']['peak_rss_bytes'])}.")
            else:
                w = b["weights_bytes"]
                notes.append(f"- torch ({b['kernel']}): weights FP {_mb(w['fp'])}, INT8 all groups "
                             f"{_mb(w['int8_all_groups'])} (sharing saved {_mb(w['int8_shared_saving'])}).")
            if "sampling" in b:
                sp = b["sampling"]
                notes.append(f"  - sampling, {sp['steps']} {sp['scheduler'].upper()} steps with CFG {sp['cfg']} "
                             f"({sp['images']} images, model batch {sp['model_batch']}): FP {_ms(sp['fp'])}, INT8 "
                             f"{_ms(sp['int8'])}, ratio {_r(sp['ratio'])}.")
            if "profile" in b:
                for key in ("fp", "int8"):
                    ops = ", ".join(f"{o['op']} {o['share'] * 100:.0f}%" for o in b["profile"][key]["ops"][:8])
                    notes.append(f"  - profile {key} (batch {b['profile']['batch']}): {ops}")
    lines += ["", *notes, "", f"Total {result.get('seconds', '…')} s, peak RSS "
              f"{_mb(result.get('peak_rss_bytes'))}.", ""]
    return "\n".join(lines)
