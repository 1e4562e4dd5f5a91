"""The LoRA-pool trainer (``python -m evojax_merge.pool train``) against torch + PEFT, on a tiny random Llama.

Tolerances (float32 both sides; XLA's and torch's matrix products round differently):
- one step's loss: 1e-5 relative;
- every LoRA A and B gradient: max |ours − torch| ≤ 1e-4 · max |torch| per module;
- one optimizer step (clip_grad_norm_, AdamW, transformers' cosine schedule): the updated factors to
  1e-4 of the learning rate where the clipped gradient exceeds 10 ε = 1e-7, 1e-2 of it everywhere (Adam's
  first step moves a weight by lr · g / (|g| + ε), as sensitive to g's rounding as g is close to ε);
- the written adapters in PEFT against the Flax model + LoRA: logits to 1e-4.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hf_oracles import ALL_PROJECTIONS, build_hf_model

from evojax_merge.lora.adapter import LoraAdapter
from evojax_merge.lora.pool import read_adapter
from evojax_merge.models.io import load_model
from evojax_merge.pool.__main__ import main, run
from evojax_merge.pool.data import StepPlan, find_task_files, load_task, pad_id_of
from evojax_merge.pool.step import losses_and_grads, pool_optimizer, pool_step
from evojax_merge.pool.trainer import PoolConfig, initial_stack
from evojax_merge.search.preemption import Preempted
from evojax_merge.zoo.tokenizer import build_tokenizer, save_tokenizer

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu person city org extract entities "
         "from text none").split()
TASKS = {"ner_a": 11, "ner_b": 9, "re_c": 7}  # records per task: full and short last batches of 4


def _records(task: str, n: int, rng: random.Random) -> list[dict]:
    out = []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
        answer = "; ".join(f"{rng.choice(['person', 'city'])}: {rng.choice(WORDS)}" for _ in range(rng.randint(1, 3)))
        out.append({"instruction": f"extract entities from {task} text: {text}", "input": "", "output": answer})
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny random transformers Llama with a word-level tokenizer, and three record files."""
    root = tmp_path_factory.mktemp("pool")
    rng = random.Random(0)
    (root / "data").mkdir()
    for task, n in TASKS.items():
        (root / "data" / f"{task}.json").write_text(json.dumps(_records(task, n, rng)))
    tok = build_tokenizer([" ".join(WORDS + list(TASKS))])
    torch_model = build_hf_model("llama", root / "model", seed=0, vocab_size=len(tok))
    save_tokenizer(tok, root / "model")
    return root, tok, torch_model


def _tasks(root: Path, tok) -> list:
    return [load_task(f, tok) for f in find_task_files([root / "data"])]


def _labels(batch: dict, n: int) -> np.ndarray:
    """transformers' labels for adapter n's rows: the answer tokens at answer_pos + 1, -100 elsewhere."""
    ids = batch["input_ids"][n]
    labels = np.full(ids.shape, -100, np.int64)
    for b in range(ids.shape[0]):
        m = batch["answer_mask"][n, b]
        labels[b, batch["answer_pos"][n, b][m] + 1] = batch["answer_tgt"][n, b][m]
    return labels


def _peft(torch_model, stack, n: int):
    """A PEFT model on a copy of the base with adapter n's factors (r 8, alpha 16, all projections)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(copy.deepcopy(torch_model), LoraConfig(
        r=8, lora_alpha=16, target_modules=ALL_PROJECTIONS, lora_dropout=0.0))
    with torch.no_grad():
        for m in stack.A:
            mod = peft_model.base_model.model.model.get_submodule(m)
            mod.lora_A["default"].weight.copy_(torch.from_numpy(np.asarray(stack.A[m][n])))
            mod.lora_B["default"].weight.copy_(torch.from_numpy(np.asarray(stack.B[m][n])))
    return peft_model


def _lora_params(peft_model) -> dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter]]:
    out = {}
    for m in [f"layers.{i}.{'self_attn' if p in ALL_PROJECTIONS[:4] else 'mlp'}.{p}"
              for i in range(2) for p in ALL_PROJECTIONS]:
        mod = peft_model.base_model.model.model.get_submodule(m)
        out[m] = (mod.lora_A["default"].weight, mod.lora_B["default"].weight)
    return out


def test_one_step_loss_grads_and_update_match_torch_peft(world):
    """Steps 0 and 1 (re_c's second batch has 3 rows and a padding row): loss and every A/B gradient of each
    adapter equal torch + PEFT's; then one optimizer step equals clip_grad_norm_ + AdamW + the cosine schedule."""
    from transformers import get_cosine_schedule_with_warmup

    root, tok, torch_model = world
    tasks = _tasks(root, tok)
    cfg = PoolConfig(batch_size=4, lr=1e-3, weight_decay=0.01, max_grad_norm=0.05)
    model = load_model(root / "model")
    stack = initial_stack(model, tasks, cfg)
    rng = np.random.default_rng(0)  # B != 0, so the gradients of A are not zero
    stack = stack.replace(B={m: jnp.asarray(rng.normal(0, 0.05, b.shape), jnp.float32) for m, b in stack.B.items()})
    plan = StepPlan(tasks, cfg.batch_size, cfg.epochs, cfg.seed, pad_id_of(tok))
    graphdef, params = nnx.split(model)
    trainable = {"A": stack.A, "B": stack.B}
    grad_fn = jax.jit(lambda t, b: losses_and_grads(graphdef, params, t, stack.scale, b))
    worst_loss, worst_grad = 0.0, 0.0
    for step in (0, 1):
        batch, _ = plan.batch(step)
        losses, grads = grad_fn(trainable, {k: jnp.asarray(v) for k, v in batch.items()})
        for n in range(len(tasks)):
            real = batch["attention_mask"][n].any(1)
            assert real.sum() == (3 if (step, tasks[n].name) == (1, "re_c") else 4)
            peft_model = _peft(torch_model, stack, n)
            out = peft_model(input_ids=torch.from_numpy(batch["input_ids"][n][real].astype(np.int64)),
                             attention_mask=torch.from_numpy(batch["attention_mask"][n][real].astype(np.int64)),
                             labels=torch.from_numpy(_labels(batch, n)[real]))
            out.loss.backward()
            rel = abs(float(losses[n]) - out.loss.item()) / out.loss.item()
            worst_loss = max(worst_loss, rel)
            assert rel < 1e-5, (step, n, float(losses[n]), out.loss.item())
            for m, (a, b) in _lora_params(peft_model).items():
                for ours, ref in ((grads["A"][m][n], a.grad), (grads["B"][m][n], b.grad)):
                    ref = ref.numpy()
                    err = np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max()
                    worst_grad = max(worst_grad, err)
                    assert np.abs(ref).max() > 0 and err < 1e-4, (step, n, m, err)
    print(f"worst relative loss difference {worst_loss:.1e}, worst gradient difference {worst_grad:.1e}")

    # one optimizer step of adapter 0 (step 0's batch), each side from the same factors
    def make_opt(total, warmup):
        return pool_optimizer(cfg.lr, total, warmup, cfg.weight_decay, cfg.max_grad_norm)

    opt_state = jax.vmap(make_opt(1, 0).init)(trainable)
    batch, _ = plan.batch(0)
    total = jnp.asarray(plan.total)
    new, _, _ = jax.jit(lambda t, o, b: pool_step(graphdef, params, t, o, stack.scale, b, total, total * 0,
                                                   jnp.ones(len(tasks), bool), make_opt))(
        trainable, opt_state, {k: jnp.asarray(v) for k, v in batch.items()})
    peft_model = _peft(torch_model, stack, 0)
    lora = _lora_params(peft_model)
    flat = [p for pair in lora.values() for p in pair]
    for p in peft_model.parameters():
        p.requires_grad_(False)
    for p in flat:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(flat, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=1e-8)
    sched = get_cosine_schedule_with_warmup(opt, 0, int(plan.total[0]))
    peft_model(input_ids=torch.from_numpy(batch["input_ids"][0].astype(np.int64)),
               attention_mask=torch.from_numpy(batch["attention_mask"][0].astype(np.int64)),
               labels=torch.from_numpy(_labels(batch, 0))).loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(flat, cfg.max_grad_norm)
    assert norm > cfg.max_grad_norm  # the clipping is exercised
    coef = min(1.0, cfg.max_grad_norm / (float(norm) + 1e-6))
    clipped = {m: (a.grad.numpy() * coef, b.grad.numpy() * coef) for m, (a, b) in lora.items()}
    opt.step()
    sched.step()
    worst = {"clear": 0.0, "all": 0.0}
    for m, (a, b) in lora.items():
        for ours, ref, g in ((new["A"][m][0], a, clipped[m][0]), (new["B"][m][0], b, clipped[m][1])):
            err = np.abs(np.asarray(ours) - ref.detach().numpy()) / cfg.lr
            worst["all"] = max(worst["all"], err.max())
            worst["clear"] = max(worst["clear"], err[np.abs(g) > 1e-7].max())
    print(f"one AdamW step, |ours - torch| / lr: {worst['clear']:.1e} where |g| > 10 eps, {worst['all']:.1e} overall")
    assert worst["clear"] < 1e-4 and worst["all"] < 1e-2
    # the other adapters moved too (each by its own gradient), from the same A
    up = "layers.0.mlp.up_proj"
    assert not np.array_equal(np.asarray(new["B"][up][1]), np.asarray(stack.B[up][1]))


def _train_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(root / "model"), "--data", str(root / "data"), "--out", str(out),
            "--batch-size", "4", "--lr", "1e-2", "--save-every", "1", *extra]


def test_written_adapters_load_in_peft_with_the_flax_logits_and_reruns_skip(world, tmp_path):
    from peft import PeftModel

    root, tok, torch_model = world
    out = tmp_path / "out"
    summary = run(_train_args(root, out))
    assert summary["trained"] == sorted(TASKS) and summary["chunks"] == 1 and not (out / ".checkpoints").exists()
    model = load_model(root / "model")
    ids = np.asarray([tok("extract entities from ner_a text: alpha person city beta")["input_ids"]] * 2)
    mask = np.ones_like(ids)
    mask[1, -3:] = 0
    for task in TASKS:
        meta = json.loads((out / task / "evojax_merge.json").read_text())
        assert meta["steps"] == 2 * -(-TASKS[task] // 4) and meta["last_loss"] < meta["first_loss"]
        assert json.loads((out / task / "adapter_config.json").read_text())["lora_alpha"] == 16.0
        f = read_adapter(out / task, model.config)
        assert set(f.A) == {f"layers.{i}.{'self_attn' if p in ALL_PROJECTIONS[:4] else 'mlp'}.{p}"
                            for i in range(2) for p in ALL_PROJECTIONS}
        lora = LoraAdapter(A={m: jnp.asarray(a) for m, a in f.A.items()},
                           B={m: jnp.asarray(b) for m, b in f.B.items()}, scale=jnp.float32(f.scale))
        ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask), lora=lora)[0])
        base = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))[0])
        peft_model = PeftModel.from_pretrained(copy.deepcopy(torch_model), str(out / task)).eval()
        with torch.no_grad():
            ref = peft_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
        real = mask.astype(bool)
        assert np.abs(ours - ref)[real].max() < 1e-4, task
        assert np.abs(ours - base)[real].max() > 1e-3, task  # the adapter changes the model
    before = {p: p.read_bytes() for p in out.rglob("*.safetensors")}
    again = run(_train_args(root, out))
    assert again["trained"] == [] and again["skipped"] == sorted(TASKS)
    assert {p: p.read_bytes() for p in out.rglob("*.safetensors")} == before
    with pytest.raises(Exception, match=r"ner_a: trained with another recipe \(lr differ\)"):
        run([*_train_args(root, out)[:-4], "--lr", "2e-2", "--save-every", "1"])


class StopAfter:
    """A stand-in for PreemptionGuard: asks to stop after ``steps`` loop steps (as SIGUSR1 would)."""

    signum = 10  # SIGUSR1

    def __init__(self, steps: int):
        self.left = steps

    @property
    def requested(self) -> bool:
        self.left -= 1
        return self.left <= 0


def test_a_stopped_run_resumes_bit_identical(world, tmp_path):
    """Stopped (as by SIGUSR1) inside chunk 1, then inside chunk 2; the reruns resume at the saved steps and
    the adapters equal an uninterrupted run's byte for byte."""
    root, _, _ = world
    args = ["--chunk", "2", "--save-every", "3"]
    full = run([*_train_args(root, tmp_path / "full"), "--chunk", "2", "--save-every", "100"])
    assert full["chunks"] == 2 and full["trained"] == sorted(TASKS)
    out = tmp_path / "stopped"
    with pytest.raises(Preempted, match="saved checkpoint step 4"):  # chunk 1 (ner_a, ner_b): 6 steps
        run([*_train_args(root, out), *args], preemption=StopAfter(4))
    assert not any(out.glob("ner_*")) and (out / ".checkpoints").is_dir()
    with pytest.raises(Preempted, match="saved checkpoint step 2"):  # chunk 1 done; chunk 2 (re_c) stopped
        run([*_train_args(root, out), *args], preemption=StopAfter(4))
    assert (out / "ner_a").is_dir() and not (out / "re_c").exists()
    resumed = run([*_train_args(root, out), *args])
    assert resumed["trained"] == ["re_c"] and resumed["skipped"] == ["ner_a", "ner_b"]
    assert resumed["timings"]["chunk_1"]["resumed_from_step"] == 2
    for task in TASKS:
        assert (out / task / "adapter_model.safetensors").read_bytes() == \
            (tmp_path / "full" / task / "adapter_model.safetensors").read_bytes(), task
    assert not (out / ".checkpoints").exists()


@pytest.mark.parametrize("change, message", [
    (lambda a, root: [*a, "--data", str(root / "missing.json")], r"--data: .*missing\.json: file not found"),
    (lambda a, root: [*a, "--projections", "q_proj,foo_proj"], r"--projections: 'foo_proj' is not one of q_proj"),
    (lambda a, root: [*a, "--rank", "0"], r"--rank: must be a positive integer, got 0"),
    (lambda a, root: [*a, "--rank", "-2"], r"--rank: must be a positive integer, got -2"),
    (lambda a, root: [*a, "--data", str(root / "empty.json")], r"empty\.json: no records"),
    (lambda a, root: [*a, "--data", str(root / "blank.jsonl")], r"blank\.jsonl: file is empty"),
    (lambda a, root: [*a, "--prompt-style", "fancy"], r"--prompt-style: 'fancy' is not one of"),
    (lambda a, root: [*a, "--model", str(root / "nothing")], r"--model: .*nothing: not a Hugging Face directory"),
])
def test_bad_input_is_one_line_and_writes_nothing(world, tmp_path, capsys, change, message):
    root, _, _ = world
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "blank.jsonl").write_text("\n")
    out = tmp_path / "out"
    args = ["train", "--model", str(root / "model"), "--data", str(root / "data" / "ner_a.json"), "--out", str(out)]
    argv = change(args, tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    import re

    assert re.search(message, err), err
    assert not out.exists()


def test_chunks_subcommand_counts_the_array(world, capsys):
    root, _, _ = world
    assert run(["chunks", "--data", str(root / "data"), "--chunk", "2"]) == {"chunks": 2, "tasks": 3}
    assert capsys.readouterr().out.strip() == "2"


@pytest.mark.slow  # a training subprocess, killed
def test_a_killed_run_resumes_at_its_last_step_bit_identical(world, tmp_path):
    """SIGKILL mid-chunk (no chance to save): the rerun restores the newest checkpoint that reads back
    (an interrupted orbax write is skipped) and ends byte-identical to an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root, _, _ = world
    args = ["--epochs", "20"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "evojax_merge.pool", *_train_args(root, out), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            steps = [int(p.name) for p in out.glob(".checkpoints/chunk_0-*/*") if p.name.isdigit()]
            if steps and max(steps) >= 8:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "ner_a").exists()
    resumed = run([*_train_args(root, out), *args])
    assert resumed["timings"]["chunk_0"]["resumed_from_step"] >= 7
    full = run([*_train_args(root, tmp_path / "full"), *args, "--save-every", "1000"])
    assert full["timings"]["chunk_0"]["resumed_from_step"] is None
    for task in TASKS:
        assert (out / task / "adapter_model.safetensors").read_bytes() == \
            (tmp_path / "full" / task / "adapter_model.safetensors").read_bytes(), task
