# ruff: noqa  -- an experiment script kept as it was run (docs/policy_experiments.md), not library code
"""Experiment script (rows V1-V4): which difference between S-est (0.84) and M1 (0.29) costs the success?

    python scripts/experiments/mlp_variants.py CACHE POLICY VARIANT EPISODES TASKS INSTRUCTIONS

CACHE: a PositionCache file (OUT/positions.safetensors of an MLP-head run); POLICY: that run's policy (its frozen
perception gives the estimates in the rollouts, its text tower the instruction features). VARIANT: one of
  onehot-mse    S-est's recipe on the cache: task one-hot, single action, MSE
  onehot-chunk  task one-hot, a continuous chunk of the policy's length (MSE over valid steps), horizon 2
  onehot-tok    task one-hot, the policy's chunk of grid tokens (CE), horizon 2
  text-mse      the mean instruction token (standardised) instead of the one-hot, single action, MSE
  text-tok      mean instruction token, grid tokens, horizon 2 (what M1 is, trained here)
  nn-mse        a soft match (softmax of cosine / 0.02) of the instruction to the training instructions, by their
                IDF-weighted mean word embedding (unseen words weigh 0), single action, MSE
  word-mse      the mean CLIP *input* word embedding of the instruction (no text transformer), single action, MSE
  match-mse     (fifth session) the policy's own instruction code (`mlp_instruction: match`, summed per task, as in
                M3), single action, MSE
  match-tok     the policy's instruction code, grid tokens (CE), horizon 2, expectation decoding (M3's output,
                trained with this script's recipe: every input standardised, 5000 x 256, no warmup)
INSTRUCTIONS: train | heldout paraphrases in the rollouts.
"""
import os, sys, time, warnings, json; sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import numpy as np, torch
from safetensors import safe_open
from sim import schema
from sim.language import INSTRUCTIONS
from vla.policy import VLAPolicy
warnings.simplefilter("ignore")
cache, pol_path, variant, n_eval, tasks, which = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5].split(","), sys.argv[6]
torch.manual_seed(0)
pol = VLAPolicy.load(pol_path)
MT10 = list(schema.MT10)
with safe_open(cache, "pt") as f:
    A = {k: f.get_tensor(k) for k in f.keys()}; names = json.loads(f.metadata()["instructions"])
instr = [names[i] for i in A["instruction_id"].tolist()]
task_of = {s: t for t in MT10 for s in INSTRUCTIONS[t][0] + INSTRUCTIONS[t][1]}
tid = torch.tensor([MT10.index(task_of[s]) for s in instr])

@torch.no_grad()
def text_feat(texts):
    out = pol.prompt.encode_texts(list(texts)); m = out.mask[..., None].float()
    return ((out.tokens * m).sum(1) / m.sum(1)).float()

@torch.no_grad()
def word_feat(texts):  # mean of the CLIP input word embeddings of the instruction's tokens (no text transformer)
    ids = pol.clip.tokenize(list(texts)); eot = pol.clip.eot_index(ids); E = pol.clip._text.token_embedding.weight
    return torch.stack([E[row[1:int(eot[i])]].mean(0) for i, row in enumerate(ids)]).float()

import math
def _toks(s):
    ids = pol.clip.tokenize([s])[0]; return ids[1:int(pol.clip.eot_index(ids[None])[0])].tolist()
train_instr = sorted(set(instr))
df = {}
for s_ in train_instr:
    for t_ in set(_toks(s_)): df[t_] = df.get(t_, 0) + 1

@torch.no_grad()
def idf_feat(texts):  # IDF-weighted mean word embedding; words never seen in training weigh 0
    E = pol.clip._text.token_embedding.weight; out = []
    for s_ in texts:
        ts = _toks(s_); w = torch.tensor([math.log(len(train_instr) / df[t]) if t in df else 0.0 for t in ts])
        w = w if w.sum() > 0 else torch.ones(len(ts))
        out.append(torch.nn.functional.normalize((E[ts] * w[:, None]).sum(0) / w.sum(), dim=0))
    return torch.stack(out).float()

if variant.startswith("word"):
    text_feat = word_feat
if variant.startswith("nn"):  # softmax over the training instructions by IDF word-embedding similarity
    ref = idf_feat(train_instr)
    text_feat = lambda texts: torch.softmax(idf_feat(texts) @ ref.T / float(os.environ.get("NN_TEMP", "0.02")), dim=-1)
if variant.startswith("match"):  # the policy's InstructionVocab match, summed per task (M3's code)
    text_feat = lambda texts: pol.instruction_match(list(texts)).float()
uniq = sorted(set(instr)); tf = dict(zip(uniq, text_feat(uniq)))
def cond(tids, texts):
    if variant.startswith("onehot"):
        return torch.nn.functional.one_hot(torch.as_tensor(tids), 10).float()
    return torch.stack([tf[t] if t in tf else text_feat([t])[0] for t in texts])

X = torch.cat([A["state"], A["positions"], cond(tid, instr)], 1)
mu, sd = X.mean(0), X.std(0).clamp_min(1e-3)
tok = variant.endswith("tok")
grid = pol.action_grid
if tok:
    Y = grid.encode(A["actions"])  # (N, T, G)
    M = A["action_mask"]
    vs = grid.vocab_sizes; T = Y.shape[1]
    out_dim = T * sum(vs)
elif variant.endswith("chunk"):  # continuous chunk of T actions, MSE over the valid steps
    Y = A["actions"]; M = A["action_mask"].float(); T = Y.shape[1]; out_dim = T * 4
else:
    Y = A["actions"][:, 0]; out_dim = 4
net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
                          torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, out_dim))
steps = 5000
opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4); sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
g = torch.Generator().manual_seed(0); t0 = time.time()
for s in range(steps):
    idx = torch.randint(len(X), (256,), generator=g)
    o = net((X[idx] - mu) / sd)
    if tok:
        o = o.reshape(256, T, -1); loss = 0; start = 0
        for gi, v in enumerate(vs):
            ce = torch.nn.functional.cross_entropy(o[..., start:start + v].flatten(0, 1), Y[idx][..., gi].flatten(), reduction="none")
            loss = loss + (ce.view(256, T) * M[idx]).sum() / M[idx].sum(); start += v
    elif variant.endswith("chunk"):
        se = ((o.reshape(256, T, 4) - Y[idx]) ** 2).mean(-1)
        loss = (se * M[idx]).sum() / M[idx].sum()
    else:
        loss = torch.nn.functional.mse_loss(o, Y[idx])
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
print(variant, "loss", float(loss), "trained in", round(time.time() - t0), "s", flush=True); net.eval()

def act(obs, t_id, text):
    with torch.no_grad():
        est = pol.estimate_positions(torch.as_tensor(obs["rgb"][None]), torch.as_tensor(obs["depth"][None]),
                                     torch.as_tensor(obs["intrinsics"][None]))[0].clamp(-2, 2)
        x = torch.cat([torch.as_tensor(obs["state"]), est, cond([t_id], [text])[0]])[None]
        o = net((x - mu) / sd)[0]
        if variant.endswith("chunk"):
            return list(o.reshape(T, 4).numpy()[:2])
        if not tok:
            return [o.numpy()]
        o = o.reshape(T, -1); toks = []; start = 0
        if variant.startswith("match"):  # expectation decoding, as token_decoding "expectation"
            probs = []
            for v in vs:
                probs.append(o[:, start:start + v].softmax(-1)); start += v
            return list(grid.decode_expected(probs).numpy()[:2])
        for v in vs:
            toks.append(o[:, start:start + v].argmax(-1)); start += v
        return list(np.asarray(grid.decode(torch.stack(toks, -1)[None].numpy()))[0][:2])

from sim.env import MetaWorldRGBD
env = MetaWorldRGBD(task=tasks[0], image_size=128)
res = {}
for task in tasks:
    ok = 0; t_id = MT10.index(task)
    for k in range(n_eval):
        seed = schema.EVAL_SEED_BASE + k
        paraphrases = INSTRUCTIONS[task][0 if which == "train" else 1]
        text = paraphrases[k % len(paraphrases)]
        obs, info = env.reset(seed=seed, options={"task": task})
        t, done = 0, False
        while t < 500 and not done:
            for a in act(obs, t_id, text):
                obs, _, term, trunc, info = env.step(np.clip(a, -1, 1)); t += 1
                if info["success"]: ok += 1; done = True; break
                if term or trunc or t >= 500: done = True; break
    res[task] = ok / n_eval; print(task, res[task], flush=True)
print(variant, which, "mean", np.mean(list(res.values())), "in", round(time.time() - t0), "s")
env.close()
