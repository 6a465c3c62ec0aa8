# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 9. Loss reweighting: token, sample and square averaging
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/minivl/minivl/blob/main/notebooks/09_loss_reweighting.ipynb)
#
# A packed training row mixes answers of one token ("Yes.") with answers of hundreds of tokens
# (a document transcription, a chain of thought). How much should each of them count in the
# loss? InternVL 2.5 (section 4.2 of the report) compares three answers to that question and
# trains with the third: **square averaging**. This chapter builds the three weightings, makes
# them exact under packing, gradient accumulation and data parallelism, and measures their
# effect on a small model learning short and long answers side by side.
#
# The code lives in `minivl/train/loss.py`; the packed rows come from `minivl/data/packing.py`
# (chapter 8).

# %%
import sys

if "google.colab" in sys.modules:  # install minivl itself on Colab
    get_ipython().run_line_magic("pip", 'install -q "minivl @ git+https://github.com/minivl/minivl"')

# %%
from minivl.scale import print_environment

env = print_environment()

# %% [markdown]
# ## What you will build
#
# - `len2weight(n, mode)`: the weight of each supervised token of a sample with `n`
#   supervised tokens, for `token`, `sample` and `square` averaging;
# - `token_loss_weights(...)`: the per-token weights of a packed row, and
#   `weighted_causal_lm_loss(...)`: the weighted mean of the next-token cross-entropy;
# - `global_loss_denominator(...)`: one denominator for all micro-batches and all ranks, so
#   that gradient accumulation and data parallelism give exactly the gradient of one big batch;
# - a measurement: the share of the gradient that short and long answers receive, and what
#   each weighting does to a model that must learn both.
#
# ## The idea
#
# Sample $i$ has $n_i$ supervised tokens with cross-entropies $\mathrm{CE}_{i,1..n_i}$. Each of
# its tokens gets the weight $w_i = \mathrm{len2weight}(n_i)$, and the loss of a batch is the
# weighted mean
#
# $$\mathcal{L} = \frac{\sum_i w_i \sum_{t=1}^{n_i} \mathrm{CE}_{i,t}}{\sum_i w_i\, n_i}.$$
#
# | mode | $w_i$ | sample $i$'s share of the loss | what it favours |
# |---|---|---|---|
# | `token` | $1$ | $\propto n_i$ | long answers (a 300-token answer counts 300 times a one-word one) |
# | `sample` | $1/n_i$ | equal for every sample | short answers (each token of a long answer is diluted) |
# | `square` | $1/\sqrt{n_i}$ | $\propto \sqrt{n_i}$ | a compromise, InternVL 2.5's choice |
#
# Token averaging is what a plain `CrossEntropyLoss()` over a batch does. The report argues it
# biases the model toward long responses, while sample averaging hurts them; square averaging sits in
# between. The figure shows how much a sample of length $n$ weighs relative to a one-token answer.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np

from minivl.train.loss import LOSS_REDUCTIONS, len2weight, sample_gradient_share

lengths = np.arange(1, 257)
fig, ax = plt.subplots(figsize=(6, 3.6))
for mode in LOSS_REDUCTIONS:
    mass = [n * len2weight(n, mode) for n in lengths]  # n_i * w_i
    ax.plot(lengths, mass, label=mode)
ax.set_xscale("log", base=2)
ax.set_yscale("log", base=2)
ax.set_xlabel("supervised tokens in the answer (n)")
ax.set_ylabel("weight of the sample, n * w(n)")
ax.set_title("How much one sample weighs, relative to a 1-token answer")
ax.legend()
plt.show()

# %% [markdown]
# ## The weights, in code
#
# `len2weight` is InternVL's function of the same name; a sample with no supervised token
# weighs 0.

# %%
# NBVAL_CHECK_OUTPUT
for n in (0, 1, 4, 30, 256):
    print(f"n={n:>3}  " + "  ".join(f"{m}={len2weight(n, m):.4f}" for m in LOSS_REDUCTIONS))

# %% [markdown]
# In a packed row (chapter 8) the weights are per token: sample $i$'s weight on each of its
# supervised tokens, 0 on prompt tokens. Here is a row with a 2-token answer and a 4-token
# answer, built by the packed dataset and its collate function.

# %%
import torch

from minivl.data.packing import PackedDataset, packed_collate_fn


def text_sample(ids: list[int], n_answer: int) -> dict:
    """A text-only sample whose last `n_answer` tokens are supervised."""
    ids_t = torch.tensor(ids)
    labels = ids_t.clone()
    labels[: len(ids) - n_answer] = -100
    return {"input_ids": ids_t, "labels": labels, "pixel_values": torch.zeros(0, 3, 1, 1),
            "image_flags": torch.zeros(0, dtype=torch.long)}


toy = [text_sample([5, 6, 0, 1], 2), text_sample([7, 2, 2, 2, 0], 4)]
pack = next(iter(PackedDataset([toy], max_packed_tokens=16, num_images_expected=4, shuffle=False)))
batch = packed_collate_fn(pack, loss_reduction="square")
print("labels      ", batch["labels"].tolist())
print("cu_seqlens  ", batch["cu_seqlens"].tolist())
print("loss_weight ", [round(w, 4) for w in batch["loss_weight"][0].tolist()])
a, b = 1 / math.sqrt(2), 1 / math.sqrt(4)
assert torch.allclose(batch["loss_weight"], torch.tensor([[0, 0, a, a, 0, b, b, b, b]]))

# %% [markdown]
# The loss shifts by one, as every causal LM does: the logit at position $t$ predicts
# `labels[t+1]`, so it is weighted by `loss_weight[t+1]`. Take logits that are the same
# distribution $p = (1/2, 1/4, 1/8, 1/8)$ at every position: a label 0 costs $\ln 2$, a label
# 1 costs $2\ln 2$, labels 2 and 3 cost $3 \ln 2$. The first sample's answer `[0, 1]` costs
# $3\ln 2$ in total, the second's `[2, 2, 2, 0]` costs $10 \ln 2$. By hand:
#
# - token: $(3 + 10)/6 \cdot \ln 2$;
# - sample: $(3/2 + 10/4)/2 \cdot \ln 2 = 2 \ln 2$;
# - square: $(3/\sqrt 2 + 10/2) / (2/\sqrt 2 + 4/2) \cdot \ln 2$.

# %%
import torch.nn.functional as F

from minivl.train.loss import token_loss_weights, weighted_causal_lm_loss

probs = torch.tensor([0.5, 0.25, 0.125, 0.125])
logits = probs.log().expand(1, 9, 4).clone()  # (1, L, V): the same distribution everywhere
by_hand = {"token": 13 / 6 * math.log(2), "sample": 2 * math.log(2),
           "square": (3 / math.sqrt(2) + 5) / (math.sqrt(2) + 2) * math.log(2)}
for mode in LOSS_REDUCTIONS:
    w = token_loss_weights(batch["labels"], mode, cu_seqlens=batch["cu_seqlens"])
    # the same loss, written out: CE of logits[t] against labels[t+1], weighted by w[t+1]
    ce = F.cross_entropy(logits[0, :-1], batch["labels"][0, 1:], ignore_index=-100, reduction="none")
    manual = (w[0, 1:] * ce).sum() / w[0, 1:].sum()
    loss = weighted_causal_lm_loss(logits, batch["labels"], w)
    print(f"{mode:>6}: minivl {loss.item():.5f}   manual {manual.item():.5f}   by hand {by_hand[mode]:.5f}")
    assert abs(loss.item() - by_hand[mode]) < 1e-5 and abs(manual.item() - loss.item()) < 1e-6

# %% [markdown]
# ## Exact under gradient accumulation and data parallelism
#
# A weighted mean is not a mean of means. If an optimizer step is split into micro-batches
# (gradient accumulation) or across GPUs (data parallelism), averaging the per-micro-batch
# losses weighs every micro-batch the same, whatever its total weight. InternVL fixes the
# data-parallel half: each rank divides by the **average over ranks** of the denominators
# $W_r = \sum w$, and DDP's gradient averaging then gives
# $\frac{1}{R}\sum_r \frac{\sum_r w\,\mathrm{CE}}{\bar W} = \frac{\sum_{\text{all}} w\,\mathrm{CE}}{\sum_{\text{all}} W}$,
# the exact global mean. `global_loss_denominator` does the same for accumulation too: it sums
# $W$ over the micro-batches of the step before averaging it over ranks, and each micro-batch
# loss is back-propagated without dividing by the number of micro-batches. (The unit tests run
# the two-process version with `torch.distributed` on CPU.)

# %%
from minivl.train.loss import global_loss_denominator

torch.manual_seed(0)
head = torch.nn.Sequential(torch.nn.Embedding(12, 8), torch.nn.Linear(8, 12))  # a per-token model
gen = torch.Generator().manual_seed(0)
micro = []
for sizes in ([3, 9], [2], [5, 5, 6]):  # three micro-batches of different total weight
    ids = torch.randint(0, 12, (1, sum(sizes)), generator=gen)
    labels = ids.clone()
    starts = np.cumsum([0] + sizes[:-1])
    labels[0, starts] = -100  # nothing predicts a sample's first token
    cu = torch.tensor(np.cumsum([0] + sizes))
    micro.append((ids, labels, token_loss_weights(labels, "square", cu_seqlens=cu)))


def gradient(loss_fn):
    head.zero_grad()
    loss_fn()
    return torch.cat([p.grad.flatten() for p in head.parameters()])


big = [torch.cat(parts, dim=1) for parts in zip(*micro)]  # one row holding everything
g_big = gradient(lambda: weighted_causal_lm_loss(head(big[0]), big[1], big[2]).backward())
W = global_loss_denominator([w for _, _, w in micro])
g_exact = gradient(lambda: [weighted_causal_lm_loss(head(i), lab, w, denominator=W).backward() for i, lab, w in micro])
g_naive = gradient(lambda: [(weighted_causal_lm_loss(head(i), lab, w) / len(micro)).backward() for i, lab, w in micro])
print(f"global denominator W = {W.item():.4f}")
print(f"|g_exact - g_big| = {(g_exact - g_big).abs().max().item():.2e}")
print(f"|g_naive - g_big| = {(g_naive - g_big).abs().max().item():.2e}")
assert torch.allclose(g_exact, g_big, atol=1e-6) and not torch.allclose(g_naive, g_big, atol=1e-3)

# %% [markdown]
# ## Only supervised positions reach the vocabulary
#
# The loss reads the logits only where the next label is supervised, yet a causal LM head
# computes them everywhere: a (L, V) tensor. For InternVL2.5-1B (V = 151,674) and a packed row
# of 16,384 tokens that is 2.5 G numbers, about 10 GB in float32 for the cross-entropy, plus
# its gradient, while most positions are image and prompt tokens whose logits nobody reads.
# `MiniVL.forward(..., supervised_logits_only=True)`, which the trainer uses, hands
# transformers' `logits_to_keep` a boolean mask of the supervised positions: the LM head
# projects only those rows and `supervised_positions_loss` gives the same number as the full
# loss (a unit test compares losses and gradients for both the plain and the weighted loss).
# `benchmarks/supervised_logits.py` measures what it saves: on a 2,048-token row with 10 %
# supervised positions and the 1B vocabulary, a small LLM keeps 0.14x the activation bytes
# for backward and runs forward + backward in 0.11x the time (2 CPU cores).

# %%
from minivl.config import MiniVLConfig
from minivl.model import MiniVL

torch.manual_seed(0)
vlm = MiniVL(MiniVLConfig.smoke(vocab_size=300)).train()
ids = torch.randint(10, 250, (1, 64), generator=torch.Generator().manual_seed(1))
labels = ids.clone()
labels[:, :48] = -100  # a 48-token prompt, a 16-token answer
w = token_loss_weights(labels, "square")
full = vlm(input_ids=ids, labels=labels, loss_weight=w)
kept = vlm(input_ids=ids, labels=labels, loss_weight=w, supervised_logits_only=True)
print(f"all positions:        logits {tuple(full.logits.shape)}, loss {full.loss.item():.6f}")
print(f"supervised positions: logits {tuple(kept.logits.shape)}, loss {kept.loss.item():.6f}")
assert abs(full.loss.item() - kept.loss.item()) < 1e-5
V, L = 151_674, 16_384
print(f"InternVL2.5-1B, one {L:,}-token row: full float32 logits {L * V * 4 / 1e9:.1f} GB")

# %% [markdown]
# ## A toy task: one-token and thirty-token answers
#
# To see what the weighting does to learning, we need answers of very different lengths that
# compete for the same small model. Each sample is a prompt `[TASK, key_a, key_b, =]` and an
# answer ending with an end token:
#
# - **short**: one of 192 keys maps to one random answer token (a 1-token answer);
# - **long**: one of 32 keys maps to a random sequence of 30 answer tokens.
#
# Half of the samples are short and half long, so a packed row of 256 tokens holds a dozen or more
# samples, most of its *tokens* long-answer tokens. The model is a 2-layer `Qwen2ForCausalLM`
# from transformers with random initial weights; it trains on packed rows from `PackedDataset`,
# with positions restarting per sample and attention isolated per sample (passing `position_ids`
# with no attention mask and `use_cache=False` makes transformers build the block-causal mask).

# %%
from minivl.scale import pick

N_SHORT, N_LONG, LONG_LEN = 192, 32, 30
N_ANSWER = 48  # answer tokens 0..47; key tokens reuse 0..47 and 48..59 for the high digit
TASK_SHORT, TASK_LONG, EQ, END = 60, 61, 62, 63
VOCAB = 64
rng = np.random.default_rng(0)
short_table = rng.integers(0, N_ANSWER, N_SHORT)
long_table = rng.integers(0, N_ANSWER, (N_LONG, LONG_LEN))


def toy_sample(kind: str, key: int) -> dict:
    """Prompt [TASK, key % 48, 48 + key // 48, =], answer tokens, END; the answer and END are supervised."""
    task, answer = (TASK_SHORT, [int(short_table[key])]) if kind == "short" else (TASK_LONG, long_table[key].tolist())
    prompt = [task, key % N_ANSWER, N_ANSWER + key // N_ANSWER, EQ]
    return text_sample(prompt + answer + [END], len(answer) + 1)


def toy_stream(n: int, seed: int) -> list[dict]:
    r = np.random.default_rng(seed)
    return [toy_sample("short", int(r.integers(N_SHORT))) if r.random() < 0.5
            else toy_sample("long", int(r.integers(N_LONG))) for _ in range(n)]


print(toy_sample("short", 5)["input_ids"].tolist())
print(toy_sample("long", 5)["input_ids"].tolist())

# %%
from transformers import Qwen2Config, Qwen2ForCausalLM


def toy_model(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      use_cache=False)
    return Qwen2ForCausalLM(cfg)


print(f"parameters: {sum(p.numel() for p in toy_model().parameters()) / 1e3:.1f}k")

# %% [markdown]
# ### The share of the gradient, measured on a batch
#
# The gradient of the loss with respect to the logit vector at position $t$ is
# $\frac{w_t}{W}(p_t - y_t)$. At initialisation $p_t$ is close to uniform for every token, so
# the share of this gradient that falls on the short answers of a packed row should match the
# analytic share $\sum_{\text{short}} n_i w_i / \sum_{\text{all}} n_i w_i$. Let us measure it.

# %%
model = toy_model()
row_ds = PackedDataset([toy_stream(200, seed=1)], max_packed_tokens=256, num_images_expected=8, seed=0)
row = next(iter(row_ds))
print("samples in the row:", row["statistics"]["num_samples"], " tokens:", row["statistics"]["num_tokens"])
measured, analytic = {}, {}
for mode in LOSS_REDUCTIONS:
    b = packed_collate_fn(row, loss_reduction=mode)
    logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
    logits.retain_grad()
    weighted_causal_lm_loss(logits, b["labels"], b["loss_weight"]).backward()
    mass = logits.grad[0].abs().sum(-1)  # (L, V) -> (L,): gradient mass at each position
    cu = b["cu_seqlens"].tolist()
    n = [int((b["labels"][0, s:e] != -100).sum()) for s, e in zip(cu[:-1], cu[1:])]
    per_sample = [mass[max(s - 1, 0): e - 1].sum().item() for s, e in zip(cu[:-1], cu[1:])]  # logit t-1 predicts t
    short = [k for k, nk in enumerate(n) if nk == 2]  # 1 answer token + END
    measured[mode] = sum(per_sample[k] for k in short) / sum(per_sample)
    shares = sample_gradient_share(n, mode)
    analytic[mode] = sum(shares[k] for k in short)
    print(f"{mode:>6}: short answers get {measured[mode]:6.1%} of the gradient (analytic {analytic[mode]:6.1%})")
    assert abs(measured[mode] - analytic[mode]) < 0.03
    model.zero_grad()

fig, ax = plt.subplots(figsize=(5, 3))
x = np.arange(len(LOSS_REDUCTIONS))
ax.bar(x - 0.2, [analytic[m] for m in LOSS_REDUCTIONS], 0.4, label="analytic")
ax.bar(x + 0.2, [measured[m] for m in LOSS_REDUCTIONS], 0.4, label="measured")
ax.set_xticks(x, LOSS_REDUCTIONS)
ax.set_ylabel("share of the gradient on short answers")
ax.set_title(f"One packed row: {len(short)} short, {len(n) - len(short)} long answers")
ax.legend()
plt.show()

# %% [markdown]
# Short answers are most of the samples of the row, yet token averaging gives them a small
# share of the gradient; sample averaging gives them most of it; square averaging lands in
# between. The measured shares match the analytic ones because at initialisation every token
# has about the same cross-entropy.
#
# ### Training with each weighting
#
# Same model initialisation, same data stream, same optimizer (AdamW, learning rate 3e-3),
# only the weighting changes. Every few steps we measure, on every key of each task, the
# teacher-forced accuracy of the answer tokens (without the end token): for short answers that
# is exact match, for long answers the fraction of the 30 tokens predicted correctly.

# %%
import time

STEPS = pick(smoke=12, cpu=600, gpu=1500)
EVAL_EVERY = max(STEPS // 12, 1)


@torch.no_grad()
def bucket_accuracy(model) -> dict[str, float]:
    """Teacher-forced accuracy of the answer tokens (END excluded), per answer-length bucket."""
    model.eval()
    out = {}
    for kind, n_keys in (("short", N_SHORT), ("long", N_LONG)):
        samples = [toy_sample(kind, k) for k in range(n_keys)]
        ids = torch.stack([s["input_ids"] for s in samples])  # (keys, L): all samples of a kind have one length
        logits = model(input_ids=ids, use_cache=False).logits[:, 3:-2]  # positions that predict answer tokens
        target = ids[:, 4:-1]  # the answer tokens
        out[kind] = (logits.argmax(-1) == target).float().mean().item()
    model.train()
    return out


def train(mode: str, steps: int, seed: int = 0) -> dict[str, list]:
    model = toy_model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    data = PackedDataset([toy_stream(steps * 20, seed=10 + seed)], max_packed_tokens=256,
                         num_images_expected=8, max_buffer_size=4, seed=0)
    history = {"step": [], "short": [], "long": []}
    for step, pack in enumerate(data, start=1):
        b = packed_collate_fn(pack, loss_reduction=mode)
        logits = model(input_ids=b["input_ids"], position_ids=b["position_ids"], use_cache=False).logits
        loss = weighted_causal_lm_loss(logits, b["labels"], b["loss_weight"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % EVAL_EVERY == 0 or step == steps:
            acc = bucket_accuracy(model)
            history["step"].append(step)
            history["short"].append(acc["short"])
            history["long"].append(acc["long"])
        if step == steps:
            break
    return history


runs = {}
for mode in LOSS_REDUCTIONS:
    t0 = time.time()
    runs[mode] = train(mode, STEPS)
    h = runs[mode]
    print(f"{mode:>6}: {STEPS} steps in {time.time() - t0:5.1f} s   "
          f"short answers {h['short'][-1]:6.1%}   long answers {h['long'][-1]:6.1%}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
for ax, kind, title in zip(axes, ("short", "long"), ("1-token answers (exact match)", "30-token answers (token accuracy)")):
    for mode in LOSS_REDUCTIONS:
        ax.plot(runs[mode]["step"], runs[mode][kind], marker=".", label=mode)
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
axes[0].set_ylabel("accuracy")
axes[0].legend()
plt.show()

# %% [markdown]
# ## Measured result
#
# The curves tell the story the report predicts. With token averaging the one-token answers,
# which receive a small share of the gradient, are learned last; with sample averaging the
# thirty-token answers, whose tokens are each diluted by 1/31, are learned last; square
# averaging keeps up with the best of the two on both buckets. Final accuracies hide this
# (every weighting gets there eventually on a task this small), so the table also gives the
# accuracy averaged over the evaluation points of the run, a measure of how fast each bucket
# is learned.
#
# The committed outputs come from a `cpu`-scale run on 2 shared CPU cores (600 steps per
# weighting, about a minute each; a few seconds each on an idle machine). Your numbers will
# differ slightly; the cell below checks the ordering.

# %%
mean_acc = {m: {k: float(np.mean(runs[m][k])) for k in ("short", "long")} for m in LOSS_REDUCTIONS}
print(f"{'mode':>6}  {'short: mean':>11}  {'final':>6}  {'long: mean':>10}  {'final':>6}")
for mode in LOSS_REDUCTIONS:
    h, a = runs[mode], mean_acc[mode]
    print(f"{mode:>6}  {a['short']:11.1%}  {h['short'][-1]:6.1%}  {a['long']:10.1%}  {h['long'][-1]:6.1%}")
if STEPS >= 300:  # the ordering needs a few hundred steps to show
    assert mean_acc["token"]["short"] < min(mean_acc["sample"]["short"], mean_acc["square"]["short"])
    assert mean_acc["sample"]["long"] < min(mean_acc["token"]["long"], mean_acc["square"]["long"])

# %% [markdown]
# ## Summary
#
# - Each supervised token of sample $i$ is weighted by $w_i = 1$ (token), $1/n_i$ (sample)
#   or $1/\sqrt{n_i}$ (square), and the loss is $\sum w\,\mathrm{CE} / \sum w$ with the
#   usual shift by one. A sample then weighs $n_i$, $1$ or $\sqrt{n_i}$.
# - In a packed row the weights are computed per sample from `cu_seqlens` (or `data_index`);
#   packing does not change the loss, which equals the weighted mean over the separate
#   samples.
# - Gradient accumulation and data parallelism stay exact when every micro-batch of a step
#   is divided by one global denominator (`global_loss_denominator`), averaged over ranks
#   as InternVL does, and micro-batch losses are not divided again by their number.
# - On a toy task, token averaging neglected one-token answers, sample averaging slowed down
#   thirty-token answers, and square averaging did well on both.
#
# ## Exercises
#
# 1. **Easy.** Add a `"cube"` mode with $w = n^{-1/3}$ to a copy of `len2weight` and plot it in
#    the first figure. Where does it sit between token and square averaging?
# 2. **Medium.** Change the mix of the toy stream to 90 % short answers. Predict from
#    `sample_gradient_share` how the share of the gradient on short answers changes for each
#    weighting, measure it with the gradient-share cell, then retrain.
# 3. **Hard.** Spawn two processes with `torch.multiprocessing`, initialise a `gloo` process
#    group, wrap the toy model in `DistributedDataParallel` and train with
#    `global_loss_denominator`. Check that the gradient after one step equals the
#    single-process gradient on both ranks' rows together, then show how far off it is when
#    each rank uses its own denominator.
