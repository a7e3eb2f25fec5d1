"""Rich tables of the benchmark figures (the JSON holds the same numbers and more)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from infalign.infra.console import console as rich_console

# |ours/TRL mean response length - 1| above which the completions/s ratio is flagged
LENGTH_TOLERANCE = 0.10


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"


def _n(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def theory_table(res: dict) -> Table:
    table = Table(title="theory engine (best of repeats; targets in the bench's docstring)", title_justify="left")
    for col in ("benchmark", "best", "median", "target", "status"):
        table.add_column(col, justify="left" if col == "benchmark" else "right")
    order = ("frontier", "optimal_transform", "best_t", "optimal_frontier")
    for r in sorted(res.values(), key=lambda r: next((i for i, k in enumerate(order) if res.get(k) is r), 99)):
        status = "-" if r["ok"] is None else ("[green]ok[/]" if r["ok"] else "[red]MISS[/]")
        table.add_row(r["label"], _s(r["best_s"]), _s(r["median_s"]),
                      "-" if r["target_s"] is None else f"< {_s(r['target_s'])}", status)
    return table


def calibration_table(res: dict) -> Table:
    table = Table(title="calibration: reference-pool drawing (draw_pool = RolloutModule + Trainer.predict)",
                  title_justify="left", caption=res["note"], caption_justify="left")
    for col in ("setting", "LM / RM params", "responses/s", "tokens/s", "best", "median", "mean len"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    table.add_row(f"{res['label']} ({res['size']})",
                  f"{res['lm_params'] / 1e6:.2f}M / {res['reward_params'] / 1e6:.2f}M",
                  _n(res["responses_per_s"]), _n(res["tokens_per_s"]), _s(res["best_s"]), _s(res["median_s"]),
                  f"{res['mean_length']:.1f}")
    return table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _f(x: float | None) -> str:
    """Three decimals; ``-`` for a figure with no value (None: NaN in bench.json, infra/cache.json_safe)."""
    return "-" if x is None else f"{x:.3f}"


def rl_table(res: dict) -> Table:
    st = res["settings"]
    title = (f"RL step (CTRLModule, RLOO): P={st['P']} x G={st['G']}, max_new_tokens={st['max_new_tokens']}, "
             f"beta={st['beta']}, {st['transform']}, best of {st['timed_steps']} steps after {st['warmup_steps']} "
             "warm-up")
    table = Table(title=title, title_justify="left", caption=res["note"], caption_justify="left")
    cols = ("size", "params", "samples/s", "tokens/s", "mean len", "step best", "step median", "GFLOP/step", "MFU")
    for col in cols:
        table.add_column(col, justify="left" if col == "size" else "right")
    for size, r in res["sizes"].items():
        table.add_row(size, f"{r['policy_params'] / 1e6:.2f}M", _n(r["samples_per_s"]), _n(r["tokens_per_s"]),
                      f"{r['mean_length']:.1f}", _s(r["best_s"]), _s(r["median_s"]),
                      f"{r.get('flops_per_step', 0) / 1e9:.2f}", _pct(r.get("mfu", {}).get("step")))
    return table


def breakdown_table(title: str, columns: dict[str, dict], peak: float | None) -> Table:
    """Median seconds and MFU of each phase (``bench/phases.py``), one column pair per implementation/size."""
    from infalign.bench.phases import PHASES

    caption = ("median seconds per step of each phase, timed inside the real steps; MFU = the phase's model FLOPs "
               "(bench/flops.py) summed over the timed steps / its time summed over them / the measured float32 "
               "matmul peak" + (f" ({peak / 1e9:.1f} GFLOP/s)" if peak else "")
               + " (the step row's too: beside the median step, not of it); '-': the implementation has no such "
               "phase, or (MFU) the phase has no model FLOPs")
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    table.add_column("phase")
    for name in columns:
        table.add_column(name, justify="right")
        table.add_column("MFU", justify="right")
    for phase in [*PHASES, "step"]:
        cells = []
        for r in columns.values():
            secs = r["median_s"] if phase == "step" else r.get("phases_s", {}).get(phase)
            cells += [_s(secs), _pct(r.get("mfu", {}).get(phase)) if secs is not None else "-"]
        if any(c != "-" for c in cells):
            table.add_row(phase, *cells)
    return table


def trl_table(res: dict) -> Table:
    st = res["settings"]
    title = (f"ours vs TRL {res['versions']['trl']} RLOOTrainer: toy GPT-2 policy and reward model of each size, "
             f"P={st['P']} x G={st['G']}, max_new_tokens={st['max_new_tokens']}, beta={st['beta']}, "
             f"best of {st.get('rounds', 1)} x {st['timed_steps']} steps (interleaved runs, "
             f"{st['warmup_steps']} warm-up step each)")
    table = Table(title=title, title_justify="left")
    for col in ("size", "implementation", "samples/s", "tokens/s", "step best", "step median", "mean len", "MFU",
                "dtype"):
        table.add_column(col, justify="left" if col in ("size", "implementation") else "right")
    for size, r_size in res["sizes"].items():
        for name, key in (("infalign CTRLModule (Lightning)", "ours"), ("TRL RLOOTrainer (HF Trainer)", "trl")):
            r = r_size[key]
            table.add_row(f"{size} ({r_size['policy_params'] / 1e6:.2f}M)" if key == "ours" else "", name,
                          _n(r["samples_per_s"]), _n(r["tokens_per_s"]), _s(r["best_s"]), _s(r["median_s"]),
                          f"{r['mean_length']:.1f}", _pct(r.get("mfu", {}).get("step")), r["dtype"])
        table.add_row("", "[bold]ratio ours/TRL[/]", f"[bold]{r_size['ratio_samples_per_s']:.2f}x[/]",
                      f"[bold]{r_size['ratio_tokens_per_s']:.2f}x[/]", "",
                      f"{r_size['ratio_samples_per_s_median']:.2f}x", "", "", "")
    return table


def build_table(res: dict) -> Table:
    st, q = res["stages"], res["quality"]
    table = Table(title=f"{res['label']}: {res['builds']} build(s) into fresh caches", title_justify="left",
                  caption="quality must stay within noise when the build gets faster: reference val loss (nats/token), "
                          "reward-model held-out accuracy vs its BT labels / vs gold (BT ceiling = Bayes accuracy)",
                  caption_justify="left")
    for col in ("stage", "best", "median", "worst", "target", "status"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    names = {"reference_seconds": "reference pre-training", "sampling_seconds": "pair sampling",
             "reward_seconds": "reward-model training", "build_seconds": "whole build"}
    for key, name in names.items():
        last = key == "build_seconds"
        status = "-" if not last or res["ok"] is None else ("[green]ok[/]" if res["ok"] else "[red]MISS[/]")
        table.add_row(name, _s(st[key]["best_s"]), _s(st[key]["median_s"]), _s(st[key].get("max_s")),
                      f"< {_s(res['target_s'])}" if last and res["target_s"] else "-", status)
    table.add_row("quality", f"ref val loss {_f(q['reference_val_loss'])}",
                  f"RM acc {_f(q['reward_val_accuracy'])} / gold {_f(q['reward_val_gold_accuracy'])}", "",
                  f"ceiling {_f(q['reward_val_bt_ceiling'])}", "")
    return table


def build_limit_table(res: dict) -> Table:
    """The build's training stages against the machine's limit (``bench/bench_build.py``'s docstring)."""
    peak = res["matmul_peak_flops"]
    table = Table(title="toy build training stages vs the machine's limit", title_justify="left",
                  caption=f"model FLOPs (fwd + 2x bwd, padding included) over the best stage time; MFU against the "
                          f"measured float32 matmul peak ({peak / 1e9:.1f} GFLOP/s); floor = the FLOPs at that "
                          f"peak; padding = share of computed tokens that are padding", caption_justify="left")
    for col in ("stage", "TFLOP", "best", "GFLOP/s", "MFU", "floor", "padding"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for name, t in res["training"].items():
        table.add_row(f"{name} training", f"{t['flops'] / 1e12:.2f}", _s(t["best_s"]), f"{t['flops_per_s'] / 1e9:.1f}",
                      _pct(t["mfu"]), _s(t["floor_s"]), _pct(t["padding_share"]))
    return table


def scale_table(res: dict) -> Table:
    sh, a = res["shape"], res["assumed"]
    title = (f"computed, not measured: one hh_harmless_won RL step ({sh['prompts']} prompts x "
             f"{sh['rows'] // sh['prompts']} samples, prompt {sh['prompt_len']} + {sh['response_len']} new tokens, "
             f"{res['reward_model']}) on one GPU")
    caption = (f"assumed: MFU {a['mfu']:.0%} on the compute-bound phases, bf16 weights, decoding bound by reading "
               f"the weights once per token step plus {a['step_overhead_s'] * 1e3:.0f} ms launch overhead per step "
               "(eager PyTorch); bench/flops.py estimate_step")
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for col in ("model", "GPU", "generation", "reward", "reference", "old log-probs (bf16)", "policy fwd+bwd",
                "step", f"{res['steps']} steps"):
        table.add_column(col, justify="left" if col in ("model", "GPU") else "right")
    for r in res["rows"]:
        ph = r["phases_s"]
        table.add_row(r["model"], r["gpu"], _s(ph["generation"]), _s(ph["reward"]), _s(ph["reference"]),
                      _s(ph["old_logprobs"]) if "old_logprobs" in ph else "-",
                      _s(ph["policy_forward+backward"]), _s(ph["step"]), f"{r['train_minutes']:.0f} min")
    return table


def length_warnings(trl_res: dict) -> list[str]:
    """One line per toy size whose ours/TRL mean response length is off by more than
    :data:`LENGTH_TOLERANCE`: completions/s then compares unequal work."""
    return [f"{size}: mean response length ours/TRL = {r['ratio_mean_length']:.2f}; completions/s compares "
            "unequal work here, read tokens/s"
            for size, r in trl_res.get("sizes", {}).items()
            if r.get("ratio_mean_length") is not None and abs(r["ratio_mean_length"] - 1) > LENGTH_TOLERANCE]


def startup_table(res: dict) -> Table:
    title = (f"start-up of a training process: a fresh interpreter imports {res['module']} and exits "
             f"({res['repeats']} interleaved runs each; median (min-max))")
    table = Table(title=title, title_justify="left",
                  caption=f"plain / frozen wall: {res['ratio']:.2f}x (infra/startup.py: what the CLIs do)",
                  caption_justify="left")
    for col in ("variant", "wall", "interpreter", "import", "exit"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    labels = {"plain": "plain import", "frozen": "import_frozen"}
    for name, parts in res["variants"].items():
        cells = (parts[p] for p in ("wall", "start", "import", "exit"))
        table.add_row(labels.get(name, name),
                      *(f"{_s(c['median_s'])} ({_s(c['best_s'])}-{_s(c['max_s'])})" for c in cells))
    return table


def print_report(results: dict, console: Console | None = None) -> None:
    if console is None:
        console = rich_console()
    meta = results.get("meta", {})
    console.print(f"[bold]infalign bench[/]  torch {meta.get('torch')}  transformers {meta.get('transformers')}  "
                  f"threads {meta.get('threads')}  repeats {meta.get('repeats')}"
                  f"{'  [yellow](quick)[/]' if meta.get('quick') else ''}")
    if "theory" in results:
        console.print(theory_table(results["theory"]))
    if "calibration" in results:
        console.print(calibration_table(results["calibration"]))
    if "rl" in results:
        res = results["rl"]
        console.print(rl_table(res))
        if all("phases_s" in r for r in res["sizes"].values()):
            console.print(breakdown_table("where an RL step's time goes (ours)", res["sizes"],
                                          res.get("matmul_peak_flops")))
    if "trl" in results:
        res = results["trl"]
        if res.get("status") != "ok":
            console.print(f"[yellow]trl: skipped[/] -- {escape(str(res.get('reason')))}")
        else:
            console.print(trl_table(res))
            columns = {f"{who} {size}": r[key] for size, r in res["sizes"].items()
                       for who, key in (("ours", "ours"), ("TRL", "trl"))}
            console.print(breakdown_table("where the step's time goes: ours vs TRL", columns,
                                          res.get("matmul_peak_flops")))
            bounds = ", ".join(f"{size} {r['ratio_bound_free_generation']:.2f}x" for size, r in res["sizes"].items()
                               if r.get("ratio_bound_free_generation"))
            if bounds:
                console.print(f"Ceiling of a faster sampler: ours/TRL median step if our generation took no time: "
                              f"{bounds} (the rest of each side's step as measured; TRL's holds more work: its "
                              f"old-log-prob forward, and each prompt run again with every completion).")
            for warning in length_warnings(res):
                console.print(f"[yellow]warning[/]: {escape(warning)}")
            for size, r in res["sizes"].items():
                gen = r.get("generation_only")
                if gen:
                    console.print(f"Sampling alone ({size}, {gen['rows']} rows): ours {_s(gen['ours_s'])} vs HF "
                                  f"generate {_s(gen['hf_generate_s'])} (HF/ours {gen['ratio']:.2f}x).")
            lr = res["settings"].get("lr", 1e-4)  # (files written before lr was recorded: 1e-4)
            frozen = "; the weights barely move, so both sample the initial policy's lengths" if lr < 1e-9 else ""
            console.print("Same on both sides: " + ", ".join([
                "same weights (TRL loads our save_pretrained copy)", "same tokenizer and prompt set",
                f"P x G = {res['settings']['P']} x {res['settings']['G']} per step",
                f"max {res['settings']['max_new_tokens']} new tokens, no minimum",
                f"1 optimizer step per batch (AdamW torch, lr {lr:g}, clip 1{frozen})",
                f"beta={res['settings']['beta']} k1 KL in the reward", f"reward {res['settings']['reward']}",
                "float32, CPU, no W&B, no eval"]) + ".", markup=False)
            console.print("Remaining differences:")
            for d in res["differences"]:
                console.print(f"  - {escape(d)}")
    if "build" in results:
        console.print(build_table(results["build"]))
        if results["build"].get("training"):
            console.print(build_limit_table(results["build"]))
    if "scale" in results:
        console.print(scale_table(results["scale"]))
    if "startup" in results:
        console.print(startup_table(results["startup"]))
    if "output" in meta:
        console.print(f"figures written to {meta['output']}")
