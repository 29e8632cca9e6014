#!/usr/bin/env bash
# One GPU check: runs every CUDA path of the project once and prints ONE JSON object on stdout.
#
#   bash bench/gpu_check.sh                       # on a CUDA machine, from anywhere
#
# None of the CPU machines runs these paths: gsplat's kernels (the fit's rasteriser on CUDA, its
# batched call), synthesis in float16 at the real SVD size, the NVML gauges. Sections, in order:
#   environment  a Python whose torch sees CUDA and that imports the project's packages: the
#                repo's .venv, the check's own venv ($GPU_CHECK_VENV), or python3 on PATH
#   install      only when none has both: a venv at $GPU_CHECK_VENV, `pip install -e '.[gpu,test]'`
#                on top of the CUDA torch found (made visible through a .pth file), or, with no
#                CUDA torch at all, torch pinned to constraints/cpu.txt's version (PyPI's Linux
#                wheels are CUDA builds; $GPU_CHECK_TORCH_INDEX names another index, e.g.
#                https://download.pytorch.org/whl/cu128) and the rest under constraints/cpu.txt
#   gsplat       gsplat's CUDA kernels loaded (built on first use when no prebuilt ones: nvcc
#                needed, minutes) and one rasterize() call through the backend the device picks
#   nvml         a Ray task holding the GPU samples it with avatar_forge.metrics.GpuSampler
#   cuda_tests   pytest -m cuda on the test files that have such tests
#   synthesis    bench/synthesis.py --settings cuda_full (real-size SVD, float16, random weights)
#   pipeline     bench/fitting.py on CUDA: the rasteriser, one photo end to end at preview (every
#                stage on the GPU, seconds per stage)
#   fitting      bench/fitting.py on CUDA: every preset, the fit alone at 1, 4 and 16 avatars per
#                call (avatars per second); last, as it takes what is left of the budget
# Each section runs under `timeout` with the smaller of its own cap and what is left of one global
# budget ($GPU_CHECK_BUDGET_S, default 480 s: the device machines allow 600 s per command). A
# section that overruns is stopped (status timed_out) and the next ones get what is left; one that
# cannot start is skipped. The JSON file is rewritten after every section, so it holds what has been
# measured so far even if the whole check is killed; fitting writes its figures as it goes. On a
# fresh machine gsplat's kernels may be built first (minutes): a second run finds them built
# (torch's extension cache) and gets every figure.
#
# Output: the JSON on stdout (one line), the same indented at $OUT/gpu_check.json (else
# out/gpu_check/gpu_check.json; $GPU_CHECK_OUT overrides both), every section's output in
# gpu_check.log beside it. Shape:
#   {"check": "gpu_check", "status": "ok|no_cuda|failed|timed_out", "message": ..., "budget_s": 480,
#    "seconds": ..., "json": PATH, "log": PATH, "python": PATH|null,
#    "sections": {NAME: {"status": "ok|failed|skipped|timed_out", "seconds": ..., "limit_s": ...,
#                        "message": ..., "figures": {...}|null}, ...}}
# Exit status: 0 when every section is ok, or when there is no CUDA device (status no_cuda: nothing
# is installed or run); 1 otherwise. The JSON is printed either way.
#
# Environment: GPU_CHECK_BUDGET_S (480), GPU_CHECK_OUT, GPU_CHECK_PYTHON (use this interpreter
# only), GPU_CHECK_VENV (~/.cache/avatar-forge/gpu-check-venv), GPU_CHECK_INSTALL=0 (never
# install), GPU_CHECK_TORCH_INDEX, GPU_CHECK_PIP_ARGS (extra pip arguments, e.g. offline:
# "--no-index --find-links /wheels"). CUDA_VISIBLE_DEVICES="" hides the GPUs (-> no_cuda).
# Sourcing this file defines its functions without running the check (the tests use that).

set -uo pipefail # not -e: a failing section is recorded, and the check goes on

GPU_CHECK_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GPU_CHECK_SECTIONS=(environment install gsplat nvml cuda_tests synthesis pipeline fitting)
# Per-section caps (seconds), within the global budget.
declare -gA GPU_CHECK_CAP=([install]=300 [gsplat]=300 [nvml]=90 [cuda_tests]=150 [synthesis]=180 [pipeline]=150 [fitting]=480)
# What the project imports besides torch (top-level modules); missing ones mean an install.
GPU_CHECK_MODULES="gsplat anny smplx diffusers transformers mediapipe ray pydantic scipy fsspec pyarrow safetensors pynvml pytest"

now_us() { local t=${EPOCHREALTIME:-}; if [[ -n $t ]]; then echo "${t//[.,]/}"; else date +%s%6N; fi; }
say() { printf 'gpu_check: [%4ds] %s\n' $((($(now_us) - CHECK_T0) / 1000000)) "$*" >&2; }

# check_init BUDGET_S SECTION...: the run's clock, output paths and the sections it plans.
check_init() {
    if [[ ! $1 =~ ^[0-9]+$ ]]; then
        echo "gpu_check: the budget must be whole seconds, got '$1' (GPU_CHECK_BUDGET_S)" >&2
        exit 2
    fi
    CHECK_BUDGET_S=$1
    shift
    CHECK_T0=$(now_us)
    CHECK_DEADLINE=$((CHECK_T0 + CHECK_BUDGET_S * 1000000))
    CHECK_RESERVE_S=$((CHECK_BUDGET_S / 10 < 8 ? CHECK_BUDGET_S / 10 : 8)) # kept back for the last write
    local dir=${GPU_CHECK_OUT:-${OUT:-$GPU_CHECK_REPO/out/gpu_check}}
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    CHECK_JSON=$dir/gpu_check.json
    CHECK_LOG=$dir/gpu_check.log
    : >"$CHECK_LOG"
    CHECK_STATE=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
    printf '%s\n' "$@" >"$CHECK_STATE/planned"
    CHECK_PY="" CURRENT_SECTION="" CURRENT_PID="" CURRENT_T0=0
    CHECK_JSON_PY=$(command -v python3 || command -v python || echo "$GPU_CHECK_REPO/.venv/bin/python")
    trap 'rm -rf "$CHECK_STATE"' EXIT
    trap 'on_signal INT' INT
    trap 'on_signal TERM' TERM
}

# record NAME STATUS SECONDS MESSAGE: a section's outcome; rewrites the JSON file.
record() {
    printf '%s' "$2" >"$CHECK_STATE/$1.status"
    printf '%s' "$3" >"$CHECK_STATE/$1.seconds"
    printf '%s' "$4" >"$CHECK_STATE/$1.message"
    write_json
}

# skip_rest MESSAGE: every planned section not recorded yet is skipped, with MESSAGE.
skip_rest() {
    local name
    while read -r name; do
        [[ -e $CHECK_STATE/$name.status ]] || record "$name" skipped 0 "$1"
    done <"$CHECK_STATE/planned"
}

seconds_since() { local d=$(($(now_us) - $1)); printf '%d.%02d' $((d / 1000000)) $((d % 1000000 / 10000)); }

# run_section NAME CAP CMD...: CMD under `timeout` with min(CAP, budget left); its stdout (the
# figures, as JSON) is kept, and goes to the log after its stderr (a failure's message is the last
# line of stderr). Returns CMD's exit status.
run_section() {
    local name=$1 cap=$2
    shift 2
    local left=$(((CHECK_DEADLINE - $(now_us)) / 1000000 - CHECK_RESERVE_S))
    local limit=$((cap < left ? cap : left))
    if ((limit < 1)); then
        record "$name" skipped 0 "not run: no time left in the ${CHECK_BUDGET_S} s budget"
        say "$name: skipped (no time left)"
        return 1
    fi
    printf '%s' "$limit" >"$CHECK_STATE/$name.limit"
    local what=${*//$'\n'/ }
    printf '\n===== %s (limit %d s): %s\n' "$name" "$limit" "${what:0:300}" >>"$CHECK_LOG"
    local offset
    offset=$(stat -c %s "$CHECK_LOG")
    say "$name: started (limit $limit s)"
    CURRENT_SECTION=$name CURRENT_T0=$(now_us)
    timeout --kill-after=5 "$limit" "$@" >"$CHECK_STATE/$name.out" 2>>"$CHECK_LOG" &
    CURRENT_PID=$!
    wait "$CURRENT_PID"
    local rc=$?
    CURRENT_PID=""
    local status=ok message="" seconds
    seconds=$(seconds_since "$CURRENT_T0")
    case $rc in
    0) ;;
    124 | 137)
        status=timed_out
        message="stopped after $limit s (its cap is $cap s, the budget ${CHECK_BUDGET_S} s)"
        ;;
    *)
        status=failed
        message="exit $rc: $(tail -c +$((offset + 1)) "$CHECK_LOG" | grep -v '^[[:space:]]*$' | tail -n 1 | cut -c1-400)"
        ;;
    esac
    printf -- '----- %s: stdout\n' "$name" >>"$CHECK_LOG"
    cat "$CHECK_STATE/$name.out" >>"$CHECK_LOG"
    printf '%s' "$rc" >"$CHECK_STATE/$name.rc"
    CURRENT_SECTION=""
    record "$name" "$status" "$seconds" "$message"
    say "$name: $status in $seconds s"
    return "$rc"
}

on_signal() {
    if [[ -n $CURRENT_PID ]]; then
        kill -TERM "$CURRENT_PID" 2>/dev/null
        wait "$CURRENT_PID" 2>/dev/null
        record "$CURRENT_SECTION" failed "$(seconds_since "$CURRENT_T0")" "interrupted by SIG$1"
    fi
    printf 'interrupted by SIG%s' "$1" >"$CHECK_STATE/top.message"
    skip_rest "not run: the check was interrupted by SIG$1"
    finish
    exit 1
}

# finish [STATUS MESSAGE]: the last write; prints the JSON on stdout. Returns 0 when the status is
# ok or no_cuda, else 1.
finish() {
    if (($# == 2)); then
        printf '%s' "$1" >"$CHECK_STATE/top.status"
        printf '%s' "$2" >"$CHECK_STATE/top.message"
    fi
    skip_rest "not run${2:+: $2}"
    write_json final
}

# write_json [final]: the JSON file from the state folder (the final call also prints it).
write_json() {
    if [[ ! -x $CHECK_JSON_PY ]]; then # no Python at all: the least that can be said
        printf '{"check": "gpu_check", "status": "failed", "message": "no python3 on PATH to write the report", "log": "%s"}\n' "$CHECK_LOG" |
            tee "$CHECK_JSON"
        return 1
    fi
    "$CHECK_JSON_PY" - "$CHECK_STATE" "${1:-}" "$CHECK_JSON" "$CHECK_LOG" "$CHECK_BUDGET_S" "$(seconds_since "$CHECK_T0")" "$CHECK_PY" <<'PY'
import json, os, sys, xml.etree.ElementTree as ET
from pathlib import Path

state, final, json_path, log, budget, seconds, python = sys.argv[1:8]
state, final = Path(state), final == "final"


def read(name: str) -> str | None:
    path = state / name
    return path.read_text(errors="replace") if path.exists() else None


def figures(name: str):
    """The section's JSON on stdout (whole or last line), else its partial file, else its JUnit counts."""
    text = (read(f"{name}.out") or "").strip()
    for candidate in (text, text.splitlines()[-1] if text else ""):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    partial = read(f"{name}.partial.json")
    if partial:
        try:
            return json.loads(partial)
        except ValueError:
            pass
    junit = state / f"{name}.junit.xml"
    if junit.exists():
        root = ET.parse(junit).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        cases = suite.iter("testcase")
        outcome = lambda case, tag: [f"{case.get('classname')}::{case.get('name')}" for _ in case.findall(tag)]
        failed, skipped = [], []
        for case in cases:
            failed += outcome(case, "failure") + outcome(case, "error")
            skipped += [f"{case.get('classname')}::{case.get('name')}: {s.get('message', '')}" for s in case.findall("skipped")]
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        return {**counts, "failed": failed, "skipped_tests": skipped, "seconds": float(suite.get("time", 0))}
    return None


def errors(value) -> list[str]:
    """Every "error" a bench reported inside its figures (it exits 0 with them)."""
    if isinstance(value, dict):
        found = [str(value["error"])] if "error" in value else []
        return found + [e for v in value.values() for e in errors(v)]
    if isinstance(value, list):
        return [e for v in value for e in errors(v)]
    return []


sections = {}
for name in (read("planned") or "").split():
    status = read(f"{name}.status")
    if status is None:
        sections[name] = {"status": "pending" if not final else "skipped", "seconds": 0.0, "message": "" if not final else "not run", "figures": None}
        continue
    entry = {"status": status, "seconds": float(read(f"{name}.seconds") or 0), "message": read(f"{name}.message") or "", "figures": figures(name)}
    if read(f"{name}.limit") is not None:
        entry["limit_s"] = int(read(f"{name}.limit"))
    if read(f"{name}.rc") is not None:
        entry["exit_code"] = int(read(f"{name}.rc"))
    found = errors(entry["figures"])
    if found and entry["status"] == "ok":
        first = found[0].strip().splitlines()[-1] if found[0].strip() else "?"
        entry.update(status="failed", message=f"{len(found)} figure(s) report an error; the first: {first[:400]}")
    tests = entry["figures"] if name == "cuda_tests" and isinstance(entry["figures"], dict) else None
    if tests is not None and entry["status"] == "ok" and tests.get("passed", 0) == 0:
        entry.update(status="failed", message=f"no CUDA test passed ({tests.get('skipped', 0)} skipped)")
    sections[name] = entry

top, message = read("top.status"), read("top.message") or ""
if top is None:
    statuses = [s["status"] for s in sections.values()]
    top = "running" if not final else "failed" if "failed" in statuses else "timed_out" if "timed_out" in statuses else "ok"
    if final and not message:
        bad = [f"{n}: {s['status']}" for n, s in sections.items() if s["status"] in ("failed", "timed_out")]
        message = "every section ran" if not bad else "; ".join(bad)
report = {
    "check": "gpu_check", "status": top, "message": message, "budget_s": int(budget), "seconds": float(seconds),
    "json": json_path, "log": log, "python": python or None, "sections": sections,
}  # fmt: skip
tmp = f"{json_path}.tmp"
with open(tmp, "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
os.replace(tmp, json_path)
if final:
    print(json.dumps(report))
    sys.exit(0 if top in ("ok", "no_cuda") else 1)
PY
}

# --- the environment -------------------------------------------------------------------------------

# What a Python has: JSON on stdout; exit 0 when torch sees CUDA and every module is there, 3 when
# torch is missing or sees no CUDA, 4 when torch sees CUDA but modules are missing.
ENV_PROBE='
import importlib.util, json, shutil, subprocess, sys
info = {"python": sys.executable, "python_version": sys.version.split()[0]}
def run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
try:
    import torch
except ImportError as err:
    info.update(torch=None, cuda=False, torch_error=str(err))
else:
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda=torch.cuda.is_available())
    if info["cuda"]:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_count=torch.cuda.device_count(), gpu_memory_bytes=props.total_memory, capability=f"{props.major}.{props.minor}")
info["missing_modules"] = [m for m in sys.argv[1].split() if importlib.util.find_spec(m) is None]
if shutil.which("nvidia-smi"):
    info["nvidia_smi"] = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
if shutil.which("nvcc"):
    info["nvcc"] = ((run(["nvcc", "--version"]) or "").splitlines() or [None])[-1]
print(json.dumps(info))
sys.exit(0 if info["cuda"] and not info["missing_modules"] else 4 if info["cuda"] else 3)
'

# probe PY OUTFILE: ENV_PROBE's exit status (127 when PY does not run).
probe() {
    [[ -x $1 ]] || return 127
    timeout 120 "$1" -c "$ENV_PROBE" "$GPU_CHECK_MODULES" >"$2" 2>>"$CHECK_LOG"
}

gpu_visible() {
    case ${CUDA_VISIBLE_DEVICES-unset} in "" | -1) return 1 ;; esac
    if command -v nvidia-smi >/dev/null 2>&1 && timeout 30 nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
        return 0
    fi
    compgen -G '/proc/driver/nvidia/gpus/*' >/dev/null
}

# install_env BASE_PY MODE VENV (run as a section): MODE "inherit" keeps BASE_PY's CUDA torch
# (its site-packages go on the venv's path through a .pth file: --system-site-packages would not
# reach them when BASE_PY is itself a venv) and installs the project on top; "fresh" installs torch
# first, pinned to constraints/cpu.txt's version, then the project under constraints/cpu.txt.
install_env() {
    set -euo pipefail
    local base=$1 mode=$2 venv=$3 purelib pin
    local -a extra pip
    read -ra extra <<<"${GPU_CHECK_PIP_ARGS:-}"
    "$base" -m venv --clear "$venv"
    pip=("$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off --timeout 20 --retries 1 "${extra[@]}")
    if [[ $mode == inherit ]]; then
        purelib=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
        "$base" -c 'import site; print("\n".join(site.getsitepackages()))' >"$purelib/gpu_check_base.pth"
        "${pip[@]}" -e '.[gpu,test]'
    else
        pin=$(sed -n 's/^torch==\([^+ ]*\).*/\1/p' constraints/cpu.txt)
        "${pip[@]}" ${GPU_CHECK_TORCH_INDEX:+--index-url "$GPU_CHECK_TORCH_INDEX"} "torch==${pin:?no torch pin in constraints/cpu.txt}"
        "${pip[@]}" -c constraints/cpu.txt -e '.[gpu,test]'
    fi
    "$venv/bin/python" -c 'import torch; assert torch.cuda.is_available(), f"torch {torch.__version__} in the new venv sees no CUDA device"'
}

# find_python: sets CHECK_PY (a Python with CUDA torch and the project's modules), or INSTALL_BASE
# and INSTALL_MODE for install_env; the environment section's figures are the chosen probe's.
find_python() {
    local venv=$1 candidate i=0 rc
    local -a candidates
    if [[ -n ${GPU_CHECK_PYTHON:-} ]]; then
        candidates=("$GPU_CHECK_PYTHON")
    else
        candidates=("$GPU_CHECK_REPO/.venv/bin/python" "$venv/bin/python" "$(command -v python3 || true)")
    fi
    INSTALL_BASE="" INSTALL_MODE=""
    for candidate in "${candidates[@]}"; do
        i=$((i + 1))
        probe "$candidate" "$CHECK_STATE/probe.$i.json"
        rc=$?
        [[ -s $CHECK_STATE/environment.out ]] || cp "$CHECK_STATE/probe.$i.json" "$CHECK_STATE/environment.out" 2>/dev/null
        if ((rc == 0)); then
            CHECK_PY=$candidate
            cp "$CHECK_STATE/probe.$i.json" "$CHECK_STATE/environment.out"
            return 0
        fi
        if ((rc == 4)) && [[ -z $INSTALL_BASE ]]; then
            INSTALL_BASE=$candidate INSTALL_MODE=inherit
            cp "$CHECK_STATE/probe.$i.json" "$CHECK_STATE/environment.out"
        fi
    done
    if [[ -z $INSTALL_BASE ]]; then
        INSTALL_BASE=$(command -v python3 || true) INSTALL_MODE=fresh
    fi
    return 1
}

# prepare_python VENV: the environment and install sections. Sets CHECK_PY and returns 0 when the
# checks can run (with every package, or with a CUDA torch that lacks some when they could not be
# installed: those sections then fail on their own), else sets STOP_STATUS and STOP_MESSAGE.
prepare_python() {
    local venv=$1 t0 seconds
    t0=$(now_us)
    if find_python "$venv"; then
        record environment ok "$(seconds_since "$t0")" "$CHECK_PY: torch sees CUDA and the project's packages import"
        record install skipped 0 "not needed"
        return 0
    fi
    seconds=$(seconds_since "$t0")
    if [[ $INSTALL_MODE == fresh ]] && ! gpu_visible; then
        STOP_STATUS=no_cuda
        STOP_MESSAGE="no CUDA device: no torch here sees one and nvidia-smi lists no GPU (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}); nothing was installed or run"
        record environment skipped "$seconds" "$STOP_MESSAGE"
        return 1
    fi
    if [[ ${GPU_CHECK_INSTALL:-1} == 0 ]]; then
        record install skipped 0 "GPU_CHECK_INSTALL=0"
    elif [[ -z $INSTALL_BASE ]]; then
        record install skipped 0 "no python3 to make a venv with"
    else
        export -f install_env
        if run_section install "${GPU_CHECK_CAP[install]}" bash -c 'install_env "$@"' install_env "$INSTALL_BASE" "$INSTALL_MODE" "$venv"; then
            CHECK_PY=$venv/bin/python
            if probe "$CHECK_PY" "$CHECK_STATE/environment.out"; then
                record environment ok "$seconds" "$CHECK_PY: installed ($INSTALL_MODE torch, from $INSTALL_BASE)"
            else
                record environment failed "$seconds" "$CHECK_PY: installed, but torch sees no CUDA or packages are missing (see figures)"
            fi
            return 0
        fi
    fi
    if [[ $INSTALL_MODE == inherit ]]; then
        CHECK_PY=$INSTALL_BASE
        record environment failed "$seconds" "$CHECK_PY: torch sees CUDA but figures.missing_modules are missing and were not installed; the sections run with it anyway"
        return 0
    fi
    STOP_STATUS=failed
    STOP_MESSAGE="a GPU is visible but no Python here has CUDA torch, and none was installed (see sections.install); nothing else was run"
    record environment failed "$seconds" "$STOP_MESSAGE"
    return 1
}

# --- the sections ----------------------------------------------------------------------------------

GSPLAT_CHECK='
import json, time
import torch
t0 = time.perf_counter()
import gsplat
from gsplat.cuda._backend import _C
load_s = time.perf_counter() - t0
if _C is None:
    raise SystemExit("gsplat has no CUDA kernels: none prebuilt, and no CUDA toolkit (nvcc) to build them")
from avatar_ops.render.camera import Cameras
from avatar_ops.render.gaussians import _resolve_backend, rasterize
g = torch.Generator().manual_seed(0)
n, size = 5000, 256
params = [(torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([0.5, 1.6, 0.3]), torch.randn(n, 4, generator=g),
          torch.rand(n, 3, generator=g) * 0.01 + 0.005, torch.rand(n, generator=g) * 0.5 + 0.5, torch.rand(n, 3, generator=g)]
params = [p.cuda().requires_grad_(True) for p in params]
view = torch.eye(4)
view[2, 3] = 3.0
cams = Cameras(view[None], torch.tensor([[[size * 1.2, 0, size / 2], [0, size * 1.2, size / 2], [0, 0, 1.0]]]), size, size).to("cuda")
backend = _resolve_backend("auto", params[0])
if backend != "gsplat":
    raise SystemExit(f"CUDA tensors resolved to the {backend!r} backend, not gsplat")
t0 = time.perf_counter()
out = rasterize(*params, cams)
(out.rgb.sum() + out.alpha.sum()).backward()
torch.cuda.synchronize()
first_s = time.perf_counter() - t0
if not (torch.isfinite(out.rgb).all() and out.alpha.max() > 0.5 and all(torch.isfinite(p.grad).all() for p in params)):
    raise SystemExit("gsplat rendered non-finite values, nothing, or non-finite gradients")
print(json.dumps({"gsplat": gsplat.__version__, "kernels": _C.__name__, "kernels_file": getattr(_C, "__file__", None), "backend": backend,
                  "load_s": round(load_s, 2), "first_call_s": round(first_s, 3), "alpha_max": round(float(out.alpha.max()), 4)}))
'

NVML_CHECK='
import json
import ray
ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False)
@ray.remote(num_gpus=1)
def sample():
    import pynvml, torch
    from avatar_forge.metrics import GpuSampler
    held = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")  # so the allocator gauge has something
    sampler = GpuSampler("gpu_check", period_s=3600.0)
    sampler.sample()
    readings = []
    for label, handle in sampler._handles:
        memory, name = pynvml.nvmlDeviceGetMemoryInfo(handle), pynvml.nvmlDeviceGetName(handle)
        readings.append({"gpu": label, "name": name.decode() if isinstance(name, bytes) else name, "utilization_ratio": pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
                         "memory_used_bytes": int(memory.used), "memory_total_bytes": int(memory.total)})
    return {"ray_gpu_ids": [str(g) for g in ray.get_gpu_ids()], "sampled_gpus": readings, "torch_allocated_bytes": int(torch.cuda.memory_allocated()), "held_bytes": held.numel()}
result = ray.get(sample.remote())
ray.shutdown()
print(json.dumps(result))
if not result["sampled_gpus"]:
    held = result["ray_gpu_ids"]
    raise SystemExit(f"GpuSampler found no GPU to sample in a Ray task holding GPU(s) {held}")
'

main() {
    check_init "${GPU_CHECK_BUDGET_S:-480}" "${GPU_CHECK_SECTIONS[@]}"
    cd "$GPU_CHECK_REPO" || exit 1
    export HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
    export ANNY_CACHE_DIR=${ANNY_CACHE_DIR:-$HOME/.cache/anny} MAX_JOBS=${MAX_JOBS:-$(nproc)}
    say "looking for a Python whose torch sees CUDA (log: $CHECK_LOG)"
    if ! prepare_python "${GPU_CHECK_VENV:-$HOME/.cache/avatar-forge/gpu-check-venv}"; then
        say "$STOP_MESSAGE"
        finish "$STOP_STATUS" "$STOP_MESSAGE"
        return
    fi
    local py=$CHECK_PY
    local -a loopback=()
    if unshare -n true 2>/dev/null && command -v ip >/dev/null; then # Ray binds every interface: keep it on loopback
        loopback=(unshare -n sh -c 'ip link set lo up; exec "$0" "$@"')
    fi
    local -a cuda_tests
    mapfile -t cuda_tests < <(grep -rl --include='test_*.py' 'pytest.mark.cuda' tests | sort)

    run_section gsplat "${GPU_CHECK_CAP[gsplat]}" "$py" -c "$GSPLAT_CHECK"
    run_section nvml "${GPU_CHECK_CAP[nvml]}" "${loopback[@]}" "$py" -c "$NVML_CHECK"
    run_section cuda_tests "${GPU_CHECK_CAP[cuda_tests]}" "$py" -m pytest -m cuda -q -rsx -p no:cacheprovider \
        --junitxml="$CHECK_STATE/cuda_tests.junit.xml" "${cuda_tests[@]}"
    run_section synthesis "${GPU_CHECK_CAP[synthesis]}" "$py" bench/synthesis.py --settings cuda_full
    run_section pipeline "${GPU_CHECK_CAP[pipeline]}" "$py" bench/fitting.py --devices cuda --presets preview --no-batched \
        --partial "$CHECK_STATE/pipeline.partial.json"
    run_section fitting "${GPU_CHECK_CAP[fitting]}" "$py" bench/fitting.py --devices cuda --presets preview standard high \
        --fit-batch 1 4 16 --no-pipeline --no-batched --partial "$CHECK_STATE/fitting.partial.json"
    finish
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
    exit $?
fi
