"""Our P-Tuning vs Hugging Face PEFT's P-tuning vs the floor, side by side.

Same backbone, same relation, same seed, same batches: PEFT's model sees the template
``[P*n] [X] [Y]`` (its n virtual tokens prepended, as ``get_peft_model`` with a
``PromptEncoderConfig`` does), ours the paper's ``[P*3] [X] [P*3] [Y]`` (for a causal LM the
block after [Y] is dropped), so both run n + len(subject) tokens per example and every batch
has the same padded shape. PEFT computes full logits (every position, whole vocabulary) and
we pick the answer position; we run the head at the answer only.

1. Training step: ours (LSTM and MLP encoders), PEFT LSTM and MLP, the floor, alternated
   in shuffled order each round, on the same batches; medians and ratios.
2. One training epoch: examples/s of ours (random and length-grouped batches) and PEFT LSTM,
   alternated batch by batch.
3. Evaluation of the whole test split: facts/s of ours (large length-sorted batches,
   inference mode, logits at the answer for the candidates only) vs PEFT-style (full
   forward, full logits, then the answer position and the candidates).
4. Peak memory (RSS) of each training contender, each in a fresh child process.
5. ``--p1-epochs N``: trains ours and PEFT LSTM for N epochs on the same batches (same
   optimizer) and scores both prompts with our test P@1 (PEFT's prompt as ``[P*n] [X] [Y]``).

    pip install -e .[bench]
    python bench/peft_side_by_side.py [--steps 20] [--p1-epochs 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from common import (
    Batch,
    Step,
    alternate,
    compose_train,
    floor_step,
    median,
    our_step,
    paired_ratio,
    peak_rss_mib,
    reset_peak_rss,
)
from hydra.utils import instantiate
from peft import PromptEncoderConfig, get_peft_model

from ptuning_lightning.lama.data import LamaDataModule
from ptuning_lightning.lama.module import PromptModule
from ptuning_lightning.lama.run import build_relation
from ptuning_lightning.launch.builders import load_backbone
from ptuning_lightning.prompting.backbones import Backbone
from ptuning_lightning.prompting.encoders import FixedPrompt

TRAIN_CONTENDERS = ("ours", "ours-mlp", "peft-lstm", "peft-mlp", "floor")
WARMUP = 3  # rounds not timed: PEFT's first two steps take seconds (allocator, oneDNN)


def peft_model(backbone: Backbone, n_virtual: int, kind: str):
    """PEFT's P-tuning on our backbone's model, sized like our encoders: the LSTM with H/2
    per direction, the MLP with hidden size H."""
    hidden = backbone.hidden_size
    config = PromptEncoderConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=n_virtual,
        encoder_reparameterization_type=kind.upper(),
        encoder_hidden_size=hidden // 2 if kind == "lstm" else hidden,
    )
    torch.manual_seed(0)
    return get_peft_model(backbone.model, config, adapter_name=kind)


def peft_logits(model, batch: Batch, n_virtual: int) -> torch.Tensor:
    """PEFT's forward (virtual tokens prepended to the text, full logits), then the answer
    position. ``batch`` comes from the ``[P*n] [X] [Y]`` template: its first n columns are the
    placeholders that PEFT's prepended virtual tokens stand for."""
    logits = model(
        input_ids=batch["input_ids"][:, n_virtual:],
        attention_mask=batch["attention_mask"][:, n_virtual:],
    ).logits
    return logits[torch.arange(logits.size(0)), batch["answer_position"]].float()


def peft_step(model, optimizer: torch.optim.Optimizer, n_virtual: int) -> Step:
    def step(batch: Batch) -> None:
        logits = peft_logits(model, batch, n_virtual)
        F.cross_entropy(logits, batch["target_token"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


class Setup:
    """The backbone, our modules, PEFT's models and the two data modules of one relation."""

    def __init__(self, args: argparse.Namespace) -> None:
        overrides = [f"backbone={args.backbone}", f"task.relation={args.relation}"]
        overrides += [f"backbone.load.dtype={args.dtype}", *args.override]
        self.cfg = compose_train(overrides)
        self.backbone = load_backbone(self.cfg)  # with the `execution` options
        self.ours, self.data = build_relation(self.cfg, self.backbone)
        self.n = args.peft_virtual_tokens or self.data.template.n_prompt  # PEFT's
        self.peft_cfg = compose_train([*overrides, f"prompt.template='[P*{self.n}] [X] [Y]'"])
        _, self.peft_data = build_relation(self.peft_cfg, self.backbone)
        mlp = compose_train([*overrides, "encoder=mlp"])
        self.ours_mlp, _ = build_relation(mlp, self.backbone)
        self.peft = {kind: peft_model(self.backbone, self.n, kind) for kind in ("lstm", "mlp")}

    def optimizer(self, model) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        return instantiate(self.cfg.optimizer)(params)

    def steps(self) -> dict[str, Step]:
        peft = {
            f"peft-{kind}": peft_step(model, self.optimizer(model), self.n)
            for kind, model in self.peft.items()
        }
        return {
            "ours": our_step(self.ours),
            "ours-mlp": our_step(self.ours_mlp),
            **peft,
            "floor": floor_step(self.backbone),
        }

    def batches(self, grouped: bool = False, epoch: int = 0) -> dict[str, Iterator[Batch]]:
        """One epoch of ours and PEFT's batches: same examples, same order, same shapes
        (unless ``grouped``: ours then come length-grouped)."""
        return {
            "ours": train_batches(self.data, epoch, group_by_length=grouped),
            "peft": train_batches(self.peft_data, epoch),
        }


def train_batches(data: LamaDataModule, epoch: int, group_by_length: bool = False):
    """Epoch ``epoch`` of ``data``'s training batches, as Lightning would draw them."""
    data.group_by_length = group_by_length
    loader = data.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return iter(loader)


def bench_steps(setup: Setup, n_steps: int) -> dict[str, list[float]]:
    steps = {name: step for name, step in setup.steps().items() if name in TRAIN_CONTENDERS}
    batches = setup.batches()

    def rounds() -> Iterator[dict[str, Batch]]:
        for _ in range(n_steps + WARMUP):
            ours, peft = next(batches["ours"]), next(batches["peft"])
            assert torch.equal(ours["index"], peft["index"]), "the same examples, in order"
            yield dict.fromkeys(("ours", "ours-mlp", "floor"), ours) | {
                "peft-lstm": peft,
                "peft-mlp": peft,
            }

    return alternate(steps, rounds(), WARMUP)


def bench_epoch(setup: Setup) -> dict[str, float]:
    """Examples/s over one epoch, the contenders alternating batch by batch."""
    steps = setup.steps()
    contenders = {"ours": steps["ours"], "ours-grouped": steps["ours"]}
    contenders["peft-lstm"] = steps["peft-lstm"]
    random, grouped = setup.batches(), setup.batches(grouped=True)
    rounds = (
        {"ours": a, "ours-grouped": b, "peft-lstm": c}
        for a, b, c in zip(random["ours"], grouped["ours"], random["peft"], strict=True)
    )
    times = alternate(contenders, rounds, warmup=0)
    n = len(setup.data.datasets["train"])
    return {name: n / sum(t) for name, t in times.items()}


def our_p1(module: PromptModule, data: LamaDataModule) -> tuple[float, float]:
    """Test P@1 and facts/s of our evaluation path."""
    correct, start = 0, time.perf_counter()
    with torch.inference_mode():
        prompt = module.prompt()
        for batch in data.test_dataloader():
            scores = module.scores(batch, prompt, candidates=True)
            correct += int((scores.argmax(-1) == batch["target_index"]).sum())
    n = len(data.datasets["test"])
    return correct / n, n / (time.perf_counter() - start)


def peft_p1(model, data: LamaDataModule, n_virtual: int, batch_size: int) -> tuple[float, float]:
    """Test P@1 and facts/s of PEFT-style evaluation: full forward and logits, in order."""
    data.eval_batch_size, correct, start = batch_size, 0, time.perf_counter()
    candidates = data.candidate_ids
    with torch.inference_mode():
        for batch in data.test_dataloader():
            scores = peft_logits(model, batch, n_virtual)[:, candidates]
            correct += int((scores.argmax(-1) == batch["target_index"]).sum())
    n = len(data.datasets["test"])
    return correct / n, n / (time.perf_counter() - start)


def bench_eval(setup: Setup, peft_batch: int) -> dict[str, float]:
    _, ours = our_p1(setup.ours, setup.data)
    _, peft = peft_p1(setup.peft["lstm"], setup.peft_data, setup.n, peft_batch)
    return {"ours": ours, "peft": peft}


def train_and_score(setup: Setup, epochs: int) -> dict[str, float]:
    """Ours and PEFT LSTM trained ``epochs`` epochs on the same batches, scored alike."""
    steps = setup.steps()
    for epoch in range(epochs):
        batches = setup.batches(epoch=epoch)
        for batch in batches["ours"]:
            steps["ours"](batch)
        for batch in batches["peft"]:
            steps["peft-lstm"](batch)
    ours, _ = our_p1(setup.ours, setup.data)
    prompt = setup.peft["lstm"].get_prompt_embedding_to_save("lstm").detach()
    fixed = PromptModule(setup.backbone, setup.peft_data.candidate_ids, FixedPrompt(prompt))
    peft, _ = our_p1(fixed, setup.peft_data)
    return {"ours": ours, "peft-lstm": peft}


def memory_child(args: argparse.Namespace) -> None:
    """Peak RSS of one contender alone: load, then a few training steps."""
    setup = Setup(args)
    step, batches = setup.steps()[args.only], setup.batches()
    gc.collect()
    reset_peak_rss()
    loaded = peak_rss_mib()
    source = batches["peft" if args.only.startswith("peft") else "ours"]
    for _ in range(3):
        step(next(source))
    print(json.dumps({"loaded": loaded, "peak": peak_rss_mib()}))


def bench_memory(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    result = {}
    for name in TRAIN_CONTENDERS:
        command = [sys.executable, sys.argv[0], "--only", name, *_passed(args)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        result[name] = json.loads(out.strip().splitlines()[-1])
    return result


def _passed(args: argparse.Namespace) -> list[str]:
    passed = ["--backbone", args.backbone, "--relation", args.relation, "--dtype", args.dtype]
    if args.peft_virtual_tokens:
        passed += ["--peft-virtual-tokens", str(args.peft_virtual_tokens)]
    return passed + [f"--override={o}" for o in args.override]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="smollm2-135m")
    parser.add_argument("--relation", default="P103")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--peft-eval-batch", type=int, default=8, help="PEFT's eval batch")
    parser.add_argument(
        "--peft-virtual-tokens",
        type=int,
        help="PEFT's virtual tokens (default: as many as our pseudo tokens, so that both run "
        "sequences of the same length; 9 is the paper's (3,3,3) count)",
    )
    parser.add_argument("--p1-epochs", type=int, default=0, help="train both, compare P@1")
    parser.add_argument("--skip", nargs="*", default=[], choices=("epoch", "eval", "memory"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--override", action="append", default=[], help="a Hydra override")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # memory child process
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when piped to a file
    torch.set_num_threads(args.threads)
    if args.only:
        return memory_child(args)

    setup = Setup(args)
    first = {k: next(v)["input_ids"].shape for k, v in setup.batches().items()}
    print(
        f"{args.backbone} {args.dtype}, LAMA {args.relation}, first batch {tuple(first['ours'])} "
        f"(PEFT {tuple(first['peft'])} with {setup.n} virtual tokens), "
        f"{setup.data.template.n_prompt} pseudo tokens, {torch.get_num_threads()} threads"
    )
    runs = bench_steps(setup, args.steps)
    print(f"\ntraining step, median of {args.steps} (alternated, same batches; ratios are")
    print("medians of per-round ratios):")
    for name, times in runs.items():
        ratio = paired_ratio(times, runs["floor"])
        print(f"  {name:10s} {median(times):.3f} s  {ratio:.3f}x floor")
    print(f"  PEFT LSTM / ours: {paired_ratio(runs['peft-lstm'], runs['ours']):.2f}x")
    print(f"  PEFT MLP / ours-mlp: {paired_ratio(runs['peft-mlp'], runs['ours-mlp']):.2f}x")
    if "epoch" not in args.skip:
        rate = bench_epoch(setup)
        print(f"\none epoch ({len(setup.data.datasets['train'])} examples), examples/s:")
        for name, value in rate.items():
            print(f"  {name:12s} {value:.1f}  {value / rate['peft-lstm']:.2f}x PEFT")
    if "eval" not in args.skip:
        rate = bench_eval(setup, args.peft_eval_batch)
        n_test = len(setup.data.datasets["test"])
        print(f"\nevaluation of the test split ({n_test} facts), facts/s:")
        print(f"  ours (batch {setup.data.eval_batch_size}) {rate['ours']:.1f}")
        print(f"  PEFT-style (batch {args.peft_eval_batch}) {rate['peft']:.1f}")
        print(f"  ours / PEFT {rate['ours'] / rate['peft']:.2f}x")
    if "memory" not in args.skip:
        print("\npeak RSS while training (each alone in a child process), MiB:")
        for name, mem in bench_memory(args).items():
            extra = mem["peak"] - mem["loaded"]
            print(f"  {name:10s} {mem['peak']:.0f} (+{extra:.0f} over the loaded model)")
    if args.p1_epochs:
        p1 = train_and_score(setup, args.p1_epochs)
        print(f"\ntest P@1 after {args.p1_epochs} epoch(s) on the same batches:")
        print(f"  ours {p1['ours']:.4f}   PEFT LSTM {p1['peft-lstm']:.4f}")


if __name__ == "__main__":
    main()
