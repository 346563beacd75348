"""Mutation check: plant known bugs, one at a time, in a temporary copy of the tree and run the tests that guard
that code. A mutant is killed when those tests fail; a survivor is a bug the suite would let through.

    python scripts/mutation.py                    # every mutant; prints the table, writes out/mutation/results.json
    python scripts/mutation.py --module auth      # one module (kernels, action_grid, ego3d, policy, auth,
                                                  #   validation, loading)
    python scripts/mutation.py --update-docs      # also rewrite the table in docs/benchmarks.md
    make mutation                                 # the last one, niced

Not part of CI: about half an hour on the 2-core dev machine. Each mutant is an exact text replacement that must
match exactly once in the current source, so a refactor that moves the text stops the run ("stale mutant") instead
of silently testing nothing; the tests of each selection must pass on the unmutated copy first. The copy holds the
files git would commit (tracked and untracked-not-ignored), and PYTHONPATH puts it ahead of the editable install.
Interpreter mutants (Triton kernels) run their tests with TRITON_INTERPRET=1 directly (no child pytest).
A mutant with a `note` is expected to survive; the note says why no test can or should kill it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- mutation:begin -->", "<!-- mutation:end -->"

ATTN, PONET = "kernels/attention.py", "kernels/_ponet_triton.py"
T_ATTN = ("tests/kernels/interpreted/test_interp_attention.py",)
T_PONET = ("tests/kernels/interpreted/test_interp_ponet.py",)
T_GRID = ("tests/policy/test_action_grid.py",)
T_EGO = ("tests/policy/test_ego3d.py",)
T_GOLDEN = ("tests/demo/test_golden.py::test_golden_observation_gives_golden_logits_and_chunk",)
T_AUTH = ("tests/serving/test_auth_matrix.py", "tests/serving/test_security.py")
T_VALID = ("tests/serving/test_validation_values.py", "tests/serving/test_validation.py", "tests/serving/test_codec.py")
T_FILES = ("tests/foundation/test_pickle_payloads.py", "tests/foundation/test_clip_loading.py")
T_CKPT = ("tests/policy/test_checkpoint.py", "tests/foundation/test_pickle_payloads.py")
T_COOP = ("tests/foundation/test_coop.py",)


@dataclasses.dataclass(frozen=True)
class Mutant:
    module: str
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    interpret: bool = False
    note: str = ""  # why it is expected to survive


M = Mutant
MUTANTS = [
    # --- kernels: fused attention (interpreter) ---
    M("kernels", "attention: causal skip ignores the query-block index (issue 14)", ATTN,
      "tl.maximum((pid_m + 1) * BLOCK_M, prefix_len)", "tl.maximum(BLOCK_M, prefix_len)", T_ATTN, True),
    M("kernels", "attention: causal skip forgets the prefix", ATTN,
      "tl.maximum((pid_m + 1) * BLOCK_M, prefix_len)", "(pid_m + 1) * BLOCK_M", T_ATTN, True),
    M("kernels", "attention: no rescale of acc in the half-precision branch (issue 14)", ATTN,
      "acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)", "acc = acc + tl.dot(p.to(vt.dtype), vt)", T_ATTN,
      True),
    M("kernels", "attention: no rescale of acc in the fp32 branch", ATTN,
      "acc = acc * alpha[:, None] + tl.dot(p, vt, input_precision=PRECISION)",
      "acc = acc + tl.dot(p, vt, input_precision=PRECISION)", T_ATTN, True),
    M("kernels", "attention: no rescale of the running sum", ATTN,
      "l_i = l_i * alpha + tl.sum(p, axis=1)", "l_i = l_i + tl.sum(p, axis=1)", T_ATTN, True),
    M("kernels", "attention: causal mask strict (query cannot see itself)", ATTN,
      "(offs_n[None, :] <= offs_m[:, None])", "(offs_n[None, :] < offs_m[:, None])", T_ATTN, True),
    M("kernels", "attention: key padding ignored", ATTN,
      "ok = ok & (tl.load(mask_ptr + b * NK + offs_n, mask=kin, other=0) != 0)", "ok = ok", T_ATTN, True),
    M("kernels", "attention: natural-log scale with exp2", ATTN,
      "scale * 1.4426950408889634, prefix_len)", "scale, prefix_len)", T_ATTN, True),
    M("kernels", "attention: empty rows divide by zero", ATTN, "has = l_i > 0", "has = l_i >= 0", T_ATTN, True),
    M("kernels", "attention: backward keeps gradient of rows that see no key", ATTN,
      "        dy = dy * has.to(dy.dtype)\n", "", T_ATTN, True),
    M("kernels", "ponet: segment max ignores segment starts", PONET,
      "take2 = (f2 != 0) | (v2 > v1)", "take2 = v2 > v1", T_PONET, True),
    M("kernels", "ponet: local max window one short", PONET,
      "for e in range(-W, W + 1):\n        j = offs_n + e", "for e in range(-W, W):\n        j = offs_n + e", T_PONET,
      True),
    M("kernels", "ponet: global mean counts padding", PONET,
      "g = acc / tl.maximum(tl.sum(cnt, axis=0), 1.0)", "g = acc / N", T_PONET, True),
    M("kernels", "ponet: no online-softmax rescale in the global pooling", PONET,
      "num = num * alpha + tl.sum(p[:, None] * kx, axis=0)", "num = num + tl.sum(p[:, None] * kx, axis=0)",
      T_PONET, True),
    # --- action grid ---
    M("action_grid", "gripper threshold >= instead of >", "vla/policy/action_grid.py",
      "(x[..., g.dims[0]] > g.threshold).long()", "(x[..., g.dims[0]] >= g.threshold).long()", T_GRID),
    M("action_grid", "decode table in 'xy' order", "vla/policy/action_grid.py",
      'for c in g.centres()], indexing="ij")', 'for c in g.centres()], indexing="xy")', T_GRID),
    M("action_grid", "encode: bin search left instead of right", "vla/policy/action_grid.py",
      "c.contiguous(), right=True)", "c.contiguous(), right=False)", T_GRID,
      note="differs only for a value exactly on an inner bin edge (fitted Gaussian quantiles: a measure-zero set "
           "for real actions; outer edges, where clipped actions sit, are not searched); which bin takes a tie "
           "is no contract"),
    M("action_grid", "normalisation without the -1 shift", "vla/policy/action_grid.py",
      "np.clip(2 * (a - lo) / np.where(ok, span, 1.0) - 1, -1, 1)",
      "np.clip(2 * (a - lo) / np.where(ok, span, 1.0), -1, 1)", T_GRID),
    M("action_grid", "rediscretize: interpolation weights swapped", "vla/policy/action_grid.py",
      "M[rows, j] = 1.0 - t", "M[rows, j] = t", T_GRID),
    M("action_grid", "equal-probability edges become uniform", "vla/policy/action_grid.py",
      "    if not (np.all(np.isfinite(e)) and np.all(np.diff(e) > 0)):\n        return np.linspace(lo, hi, m + 1)\n",
      "    return np.linspace(lo, hi, m + 1)\n", T_GRID),
    # --- Ego3D ---
    M("ego3d", "pixel centres at integer coordinates", "vla/policy/ego3d.py",
      "v = (torch.arange(Hd, dtype=torch.float64) + 0.5) * step", "v = torch.arange(Hd, dtype=torch.float64) * step",
      T_EGO),
    M("ego3d", "invalid depth enters the cell average", "vla/policy/ego3d.py",
      "den = F.adaptive_avg_pool2d((d > 0).float(), (Hd, Wd))",
      "den = F.adaptive_avg_pool2d(torch.ones_like(d), (Hd, Wd))", T_EGO),
    M("ego3d", "K not rescaled to the network input", "vla/policy/ego3d.py",
      "scale = torch.tensor([[S_w / W], [S_h / H], [1.0]]", "scale = torch.tensor([[1.0], [1.0], [1.0]]", T_EGO),
    M("ego3d", "has_depth=False cameras keep their depth", "vla/policy/ego3d.py",
      "depth = torch.where(has_depth[:, :, None, None, None], depth, zero)", "depth = depth", T_EGO),
    M("ego3d", "points not centred before the sinusoids", "vla/policy/ego3d.py",
      "pn = (points.reshape(B, V, P, -1, 3) - self.centre) / self.scale",
      "pn = points.reshape(B, V, P, -1, 3) / self.scale", T_EGO),
    # --- policy model (golden logits) ---
    M("policy", "Ego3D removed from forward (issue 14)", "vla/policy/model.py",
      "        if self.ego3d is not None:\n            d = depth", "        if False:\n            d = depth",
      T_GOLDEN),
    M("policy", "camera embedding dropped", "vla/policy/model.py",
      "patches = patches + self.camera_embed[None, :, None, :].to(patches.dtype)", "patches = patches", T_GOLDEN),
    M("policy", "state token not normalised", "vla/policy/model.py",
      'return (state.float() - mean) / std.clamp_min(1e-6)', 'return state.float()', T_GOLDEN),
    # --- auth ---
    M("auth", "Predict added to the open list (issue 14)", "vla/serving/auth.py",
      'OPEN_PREFIXES = ("/grpc.health.v1.Health/",)',
      'OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/vla.v1.PolicyService/Predict")', T_AUTH),
    M("auth", "vision service open", "vla/serving/auth.py",
      'OPEN_PREFIXES = ("/grpc.health.v1.Health/",)', 'OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/vla.v1.Vision")',
      T_AUTH),
    M("auth", "a prefix of the token is accepted", "vla/serving/auth.py",
      "if hmac.compare_digest(got, self._expected):", "if got and self._expected.startswith(got):", T_AUTH),
    M("auth", "the token without 'Bearer ' is accepted", "vla/serving/auth.py",
      "if hmac.compare_digest(got, self._expected):",
      "if hmac.compare_digest(got.removeprefix(b'Bearer '), self._expected[7:]):", T_AUTH),
    M("auth", "any authorization header is accepted", "vla/serving/auth.py",
      "if hmac.compare_digest(got, self._expected):", "if got:", T_AUTH),
    # --- request validation ---
    M("validation", "uint16 depth not converted to metres", "vla/serving/validation.py",
      "return d.astype(np.float32) / np.float32(DEPTH_SCALE)", "return d.astype(np.float32)", T_VALID),
    M("validation", "negative depth accepted", "vla/serving/validation.py",
      "    if lo < 0:\n        raise FieldError(f, f\"negative depth",
      "    if False:\n        raise FieldError(f, f\"negative depth", T_VALID),
    M("validation", "one positive focal length is enough", "vla/serving/validation.py",
      "if not (K[0, 0] > 0 and K[1, 1] > 0):", "if not (K[0, 0] > 0 or K[1, 1] > 0):", T_VALID),
    M("validation", "instruction length limit off by a lot", "vla/serving/validation.py",
      "if len(text) > spec.max_instruction_chars:", "if len(text) > 10 * spec.max_instruction_chars:", T_VALID),
    M("validation", "missing cameras not detected", "vla/serving/validation.py",
      "    if missing:\n        raise FieldError(field, f\"missing camera(s)",
      "    if False:\n        raise FieldError(field, f\"missing camera(s)", T_VALID),
    M("validation", "negative ensemble coefficient accepted", "vla/serving/validation.py",
      "if not math.isfinite(coef) or coef < 0:", "if not math.isfinite(coef):", T_VALID),
    # --- checkpoint and weights loading ---
    M("loading", "weights_only=False with the same refusal message (issue 14)", "vla/files.py",
      '            state = torch.load(str(path), map_location="cpu", weights_only=True)\n',
      '            state = torch.load(str(path), map_location="cpu", weights_only=False)\n'
      '            if any(not isinstance(v, torch.Tensor) for v in state.get("state_dict", state).values()):\n'
      '                raise RuntimeError("not plain tensors")\n', T_FILES),
    M("loading", "TorchScript archives not refused", "vla/files.py",
      "        if _is_torchscript_archive(path):", "        if False:", T_FILES),
    M("loading", "DataParallel prefix kept", "vla/files.py",
      "        state = {k[len(\"module.\"):]: v for k, v in state.items()}", "        state = state", T_FILES),
    M("loading", "non-tensor entries let through", "vla/files.py",
      "    if bad:\n        raise UserError(f\"{path}: entries",
      "    if False:\n        raise UserError(f\"{path}: entries", T_FILES),
    M("loading", "policy weights of the wrong shape accepted", "vla/policy/checkpoint.py",
      "    if bad_shape or miss or extra:", "    if miss or extra:", T_CKPT),
    M("loading", "policy weights with unexpected keys accepted", "vla/policy/checkpoint.py",
      "    if bad_shape or miss or extra:", "    if bad_shape or miss:", T_CKPT),
    M("loading", "policy weights with missing keys accepted", "vla/policy/checkpoint.py",
      "    if bad_shape or miss or extra:", "    if bad_shape or extra:", T_CKPT),
    M("loading", "CoOp context of another class list accepted", "vla/prompts/coop.py",
      '        if problems:\n            raise UserError(f"{path} does not fit this model: "',
      '        if False:\n            raise UserError(f"{path} does not fit this model: "', T_COOP),
]


def tree_files(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                         capture_output=True).stdout.decode()
    return [p for p in out.split("\0") if p and (root / p).is_file()]


def copy_tree(root: Path, dst: Path) -> None:
    for rel in tree_files(root):
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)


def run_tests(tree: Path, tests: tuple[str, ...], interpret: bool, timeout: float) -> tuple[str, str, float]:
    """(outcome, first failing test or reason, seconds); outcome is 'passed', 'failed' or 'timeout'."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", "egl")
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *tests]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result within {timeout:.0f} s", time.perf_counter() - t0
    dt = time.perf_counter() - t0
    if proc.returncode == 0:
        return "passed", "", dt
    failed = re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", proc.stdout, re.M)  # test ids may hold spaces
    why = failed[0] if failed else f"pytest exit {proc.returncode}: {(proc.stdout + proc.stderr)[-300:]!r}"
    return "failed", why, dt


def check_imports_from_copy(tree: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(tree))
    code = "import kernels, sim, vla; print(kernels.__file__, sim.__file__, vla.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True).stdout
    if not all(p.startswith(str(tree)) for p in out.split()):
        raise SystemExit(f"the copy's packages are not the ones imported ({out.strip()}): check PYTHONPATH")


def apply(tree: Path, m: Mutant) -> str:
    path = tree / m.path
    src = path.read_text()
    n = src.count(m.old)
    if n != 1:
        raise SystemExit(f"stale mutant {m.name!r}: its text occurs {n} times in {m.path} (update MUTANTS)")
    path.write_text(src.replace(m.old, m.new))
    return src


def table(results: list[dict]) -> str:
    mods = list(dict.fromkeys(r["module"] for r in results))
    lines = ["| module | mutants | killed | survived (explained) | survived (unexplained) |", "|---|---|---|---|---|"]
    for mod in mods:
        rs = [r for r in results if r["module"] == mod]
        k = sum(r["status"] == "killed" for r in rs)
        se = sum(r["status"] == "survived" and bool(r["note"]) for r in rs)
        su = sum(r["status"] == "survived" and not r["note"] for r in rs)
        lines.append(f"| {mod} | {len(rs)} | {k} | {se} | {su} |")
    lines += ["", "| module | planted bug | result | first failing test / why it survives |", "|---|---|---|---|"]
    for r in results:
        detail = r["killed_by"] if r["status"] == "killed" else (r["note"] or "**no test fails: add one**")
        lines.append(f"| {r['module']} | {r['name']} | {r['status']} | {detail.replace('|', '/')} |")
    return "\n".join(lines)


def docs_header(n: int, minutes: float, date: str, load: float | None) -> str:
    where = f"{os.cpu_count()} cores, {platform.machine()}" + (f", load average {load:.1f} at the end" if load else "")
    return textwrap.fill(
        f"`make mutation`: {n} planted bugs, {minutes:.0f} min ({where}), {date}. Each runs only the tests that "
        "guard its module, with `-x`, so the first failing test is named; mutants and their tests are listed in "
        "`scripts/mutation.py`.", 116) + "\n\n"


def update_docs(text: str) -> None:
    from vla.files import write_text_atomic

    doc = DOCS.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc and END in doc:
        doc = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, doc, flags=re.S)
    else:
        doc = doc.rstrip("\n") + "\n\n## Mutation check (`make mutation`)\n\n" + block + "\n"
    write_text_atomic(DOCS, doc)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--module", action="append", help="only these modules (repeatable)")
    p.add_argument("--name", action="append", help="only mutants whose name contains this (repeatable)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per test run")
    p.add_argument("--update-docs", action="store_true", help=f"rewrite the table in {DOCS.relative_to(ROOT)}")
    p.add_argument("--json", default=str(ROOT / "out" / "mutation" / "results.json"))
    args = p.parse_args(argv)
    mutants = [m for m in MUTANTS if (not args.module or m.module in args.module)
               and (not args.name or any(n in m.name for n in args.name))]
    if args.update_docs and len(mutants) != len(MUTANTS):
        raise SystemExit("--update-docs records the whole list: run it without --module/--name")
    if not mutants:
        raise SystemExit(f"no mutant matches; modules: {sorted({m.module for m in MUTANTS})}")
    t_start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="vla-mutation-") as tmp:
        tree = Path(tmp) / "tree"
        copy_tree(ROOT, tree)
        check_imports_from_copy(tree)
        for m in mutants:  # every mutant's text must be there before anything runs
            apply(tree, m)
            (tree / m.path).write_text((ROOT / m.path).read_text())
        for tests, interpret in dict.fromkeys((m.tests, m.interpret) for m in mutants):
            outcome, why, dt = run_tests(tree, tests, interpret, args.timeout)
            print(f"baseline {' '.join(tests)}: {outcome} ({dt:.0f} s)", flush=True)
            if outcome != "passed":
                raise SystemExit(f"the unmutated tests fail ({why}): fix them before judging mutants")
        for i, m in enumerate(mutants, 1):
            original = apply(tree, m)
            try:
                outcome, why, dt = run_tests(tree, m.tests, m.interpret, args.timeout)
            finally:
                (tree / m.path).write_text(original)
            status = "survived" if outcome == "passed" else "killed"
            results.append({"module": m.module, "name": m.name, "file": m.path, "status": status,
                            "killed_by": why if status == "killed" else "", "note": m.note, "seconds": round(dt, 1)})
            print(f"[{i}/{len(mutants)}] {m.module}: {m.name}: {status.upper()} {why} ({dt:.0f} s)", flush=True)
    minutes = (time.perf_counter() - t_start) / 60
    text = table(results)
    print("\n" + text)
    from vla.files import write_json_atomic

    load = round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None
    date = datetime.date.today().isoformat()
    write_json_atomic(args.json, {"date": date, "minutes": round(minutes, 1), "load": load, "results": results})
    if args.update_docs:
        update_docs(docs_header(len(results), minutes, date, load) + text)
    unexplained = [r for r in results if r["status"] == "survived" and not r["note"]]
    return 1 if unexplained else 0


if __name__ == "__main__":
    raise SystemExit(main())
