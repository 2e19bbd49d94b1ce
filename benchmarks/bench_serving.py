"""Real-time serving: ``tandem serve`` against a bare ASGI floor and plain FastAPI, under wrk.

Claims under test (issue goals), on a W1 model (torch MLP 32→256→ReLU→256→ReLU→2, exported
to the Bundle) and a LightGBM model of 200 trees, one core for the server:

  capacity   ≥ 5,000 req/s per core for W1, and above the bare-uvicorn floor
  latency    p50 at concurrency 1 ≤ raw single-row ``Predictor.predict`` + 0.2 ms;
             p99 at concurrency 64 ≤ 25 ms
  startup    ready (first 200 on ``/v2/health/ready``) ≤ 1.5 s after spawning ``tandem serve``
  memory     server RSS ≤ 150 MB after the load runs

How: both models are trained by tandem on synthetic data (32 float columns f0..f31, binary
target) into a throw-away registry. Every server is a subprocess pinned to core 0
(``taskset -c 0``), bound to 127.0.0.1, and serves both models; the load generator is wrk (C,
Debian's package) pinned to core 1, closed loop (``wrk -t1 -cC``) at concurrency 1, 8 and 64,
POSTing one Open Inference Protocol v2 request of one row
(``{"inputs":[{"name":"input","shape":[1,32],"datatype":"FP64","data":[...]}]}``) to
``/v2/models/<model>/infer``. The servers, all started once and all in the same run:

  tandem           ``tandem serve w1 gbdt --threads 1`` (tandem's own server)
  tandem-uvicorn   ``tandem.serving.asgi:create_app`` under uvicorn (when that module exists)
  bare-uvicorn     the floor: a bare ASGI callable (no framework, no batching; orjson; the
                   session run inline) under uvicorn ``--loop uvloop --http httptools``
  fastapi          plain FastAPI (pydantic model of the OIP body, ``async def`` endpoint,
                   default JSONResponse) under the same uvicorn
  bare-granian     the bare ASGI app under granian (``--workers 1 --runtime-threads 1``)
  bare-rsgi        the same work on granian's native RSGI interface

The baselines load the same Bundle with ``tandem.load(name, threads=1)`` and run its ONNX
Runtime session (1 intra-op thread) directly: the graph input is the (32, n) float64 matrix.
Each (model, concurrency) cell gets a warm-up run, then ``--rounds`` rounds in which the
servers take turns in a rotating order (a noisy neighbour slows all alike); figures are
medians over rounds, ratios against the floor are medians of per-round ratios. Per run: req/s,
p50/p99 from wrk's latency histogram (a Lua ``done()`` hook prints them as JSON), non-2xx
responses, socket errors, the server's CPU µs per request (utime + stime over the server's
process tree from ``/proc``, before/after, over requests completed), and how busy core 0 was
outside the server meanwhile ("other": other processes on a shared machine, and kernel network
work not charged to the server), so a noisy run can be told from a slow server.

Also measured, in-process on core 0: raw single-row ``Predictor.predict`` and a bare
``session.run`` (the reference of the p50 goal); a JSON codec micro-benchmark (json vs orjson
vs msgspec vs pydantic, decoding the OIP request and encoding the response), which is how the
codec was chosen; startup of ``tandem serve`` (median of ``--starts`` fresh spawns) and every
server's RSS (VmRSS over its process tree) after the load runs. Run from the repository root:

    PYTHONPATH=src python benchmarks/bench_serving.py [--quick] [--no-tandem]

(~7 min; ``--quick``: ~2 min, one round of 2 s per cell.) Needs ``wrk`` and ``taskset`` on
PATH and at least 2 cores. Results also go to ``benchmarks/out/bench_serving.json``.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa
from pydantic import BaseModel

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from _common import (  # noqa: E402
    Timer,
    interleaved,
    load_test_unavailable,
    median,
    paired_ratio,
    save_results,
    synthetic_classification,
    text_table,
    train_models,
)

SCRIPT = "bench_serving"
SERVER_CORE, LOAD_CORE = 0, 1
CONCURRENCY = (1, 8, 64)
N_FEATURES = 32
MODELS = ("w1", "gbdt")
FLOOR = "bare-uvicorn"
HOST = "127.0.0.1"
READY_PATH = "/v2/health/ready"
GOALS = {
    "capacity_w1_min_rps": 5000.0,
    "p50_c1_over_raw_max_ms": 0.2,
    "p99_c64_max_ms": 25.0,
    "ready_max_s": 1.5,
    "rss_max_mb": 150.0,
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- data and models ---------------------------------------------------------------------------


def make_data(n_rows: int, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    """A training table (f0..f31 + binary ``y``, as in bench_predict) and 64 fresh rows."""
    rng = np.random.default_rng(seed)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        return synthetic_classification(rng, n, N_FEATURES)

    x, y = draw(n_rows)
    table = pa.table({**{f"f{j}": x[:, j] for j in range(N_FEATURES)}, "y": y})
    return table, draw(64)[0]


def oip_body(rows: np.ndarray) -> bytes:
    """An Open Inference Protocol v2 request of ``rows`` (n, 32) as one FP64 matrix input."""
    request = {
        "inputs": [
            {
                "name": "input",
                "shape": list(rows.shape),
                "datatype": "FP64",
                "data": [float(v) for v in rows.ravel()],
            }
        ]
    }
    return json.dumps(request).encode()


def wrk_scripts(folder: Path, bodies: dict[Any, bytes]) -> dict[Any, Path]:
    """One wrk script per key in ``folder``, each posting its body (see :data:`LUA`)."""
    scripts = {}
    for key, body in bodies.items():
        scripts[key] = folder / f"post-{key}.lua"
        scripts[key].write_text(LUA.format(body=body.decode()))
    return scripts


# -- processes ---------------------------------------------------------------------------------


def stat_fields(pid: int, thread: int | None = None) -> list[str] | None:
    """Fields of /proc/<pid>/stat (of one ``thread``'s: /proc/<pid>/task/<thread>/stat) after
    the command name (index 0 is field 3, state)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        raw = Path(path).read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from the ppid of every process in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of ``root`` and its descendants (each stat already sums its threads)."""
    ticks = 0
    for pid in process_tree(root):
        fields = stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def http_request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


PORT = "{port}"  # placeholder in a ServerSpec's argv


@dataclass
class ServerSpec:
    key: str
    describe: str
    template: list[str]
    models: tuple[str, ...] = MODELS

    def argv(self, port: int) -> list[str]:
        return [str(port) if a == PORT else a for a in self.template]


@dataclass
class Server:
    """One server subprocess pinned to the server core."""

    spec: ServerSpec
    env: dict[str, str]
    log_dir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    ready_s: float | None = None
    started_at: float = 0.0
    seen: set[tuple[int, str]] = field(default_factory=set)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.spec.key}-{self.port}.log"

    def start(self, timeout: float = 60.0) -> float:
        """Spawn and wait for the first 200 on the readiness path; seconds from spawn."""
        self.port = free_port()
        argv = ["taskset", "-c", str(SERVER_CORE), *self.spec.argv(self.port)]
        log = self.log_path.open("wb")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = self.started_at + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.key} exited with {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                status, _ = http_request(self.port, "GET", READY_PATH, timeout=1.0)
            except (OSError, http.client.HTTPException):
                status = 0
            if status == 200:
                self.ready_s = time.perf_counter() - self.started_at
                self._remember()
                return self.ready_s
            time.sleep(0.005)
        raise RuntimeError(f"{self.spec.key} not ready after {timeout:.0f}s: {self.log_tail()}")

    def _remember(self) -> None:
        """Record the process tree (pid, start time) so stop() can end exactly these."""
        if self.proc is not None:
            for pid in process_tree(self.proc.pid):
                fields = stat_fields(pid)
                if fields is not None:
                    self.seen.add((pid, fields[19]))

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return tree_cpu_seconds(self.proc.pid)

    def rss(self) -> dict[str, int]:
        assert self.proc is not None
        tree = process_tree(self.proc.pid)
        return {"main": rss_bytes(self.proc.pid), "tree": sum(rss_bytes(p) for p in tree)}

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        self._remember()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        # workers (granian) that outlived their parent: only the ones this server started
        for pid, start in self.seen:
            fields = stat_fields(pid)
            if fields is not None and fields[19] == start and pid != self.proc.pid:
                with suppress(OSError):
                    os.kill(pid, 9)
        self.proc = None


def server_specs(have_tandem: bool, have_asgi: bool, alternatives: bool) -> list[ServerSpec]:
    py = sys.executable
    uvicorn = [py, "-m", "uvicorn", "--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    uvicorn += ["--log-level", "warning", "--host", HOST, "--port", PORT]
    granian = [py, "-m", "granian", "--workers", "1", "--runtime-threads", "1", "--http", "1"]
    granian += ["--no-ws", "--log-level", "warning", "--host", HOST, "--port", PORT]
    cli = [py, "-c", "from tandem.cli import main; main()"]
    specs = []
    if have_tandem:
        specs.append(
            ServerSpec(
                "tandem",
                "tandem serve w1 gbdt --threads 1 --log-sample 0 (its own HTTP layer)",
                # the baselines keep no prediction log: like for like (bench_predlog.py
                # measures what the log costs)
                [
                    *cli,
                    "serve",
                    *MODELS,
                    "--host",
                    HOST,
                    "--port",
                    PORT,
                    "--threads",
                    "1",
                    "--log-sample",
                    "0",
                ],
            )
        )
    specs += [
        ServerSpec(
            FLOOR,
            "bare ASGI app, uvicorn (uvloop, httptools), orjson, session inline",
            [*uvicorn, "serving_baselines.bare_asgi:app"],
        ),
        ServerSpec(
            "fastapi",
            "plain FastAPI (pydantic body, async def, JSONResponse), same uvicorn",
            [*uvicorn, "serving_baselines.fastapi_app:app"],
        ),
    ]
    if alternatives:
        if have_asgi:
            specs.append(
                ServerSpec(
                    "tandem-uvicorn",
                    "tandem.serving.asgi:create_app under the same uvicorn",
                    [*uvicorn, "--factory", "tandem.serving.asgi:create_app"],
                    models=("w1",),
                )
            )
        specs += [
            ServerSpec(
                "bare-granian",
                "bare ASGI app under granian (1 worker, 1 runtime thread)",
                [*granian, "--interface", "asgi", "serving_baselines.bare_asgi:app"],
                models=("w1",),
            ),
            ServerSpec(
                "bare-rsgi",
                "bare app on granian's RSGI interface (1 worker, 1 runtime thread)",
                [*granian, "--interface", "rsgi", "serving_baselines.bare_rsgi:app"],
                models=("w1",),
            ),
        ]
    return specs


# -- wrk ---------------------------------------------------------------------------------------

LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,"connect":%.0f,"read":%.0f,' ..
    '"write":%.0f,"status":%.0f,"timeout":%.0f,"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,' ..
    '"max_us":%.0f,"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def core_busy_seconds(core: int) -> float:
    """Seconds ``core`` spent busy (user, nice, system, irq, softirq, steal) since boot."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            v = [int(x) for x in line.split()[1:]]
            return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / CLK_TCK
    return 0.0


def wrk_argv(port: int, model: str, lua: Path, connections: int, seconds: int) -> list[str]:
    """A closed-loop wrk run on the load core against ``model``'s OIP endpoint."""
    url = f"http://{HOST}:{port}/v2/models/{model}/infer"
    argv = ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    return [*argv, "--latency", "--timeout", "10s", "-s", str(lua), url]


def wrk_result(returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    """What :data:`LUA`'s ``done`` printed (requests, errors, latency percentiles)."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({returncode}): {stdout[-800:]} {stderr}")
    result: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
    return result


def socket_errors(r: dict[str, Any]) -> int:
    """Connections wrk could not open, read, write or that timed out, in a :func:`wrk_result`."""
    return int(r["connect"] + r["read"] + r["write"] + r["timeout"])


def run_wrk(
    server: Server, model: str, lua: Path, connections: int, seconds: int
) -> dict[str, Any]:
    """One closed-loop wrk run; the server's CPU time is read around it, and so is how busy
    the server core was with other work (a noisy neighbour shows there, not in our numbers).

    A run that completes no request and reports no error (seen once on the shared machine)
    is repeated once."""
    argv = wrk_argv(server.port, model, lua, connections, seconds)
    attempts = 0
    while True:
        attempts += 1
        cpu0, busy0 = server.cpu_seconds(), core_busy_seconds(SERVER_CORE)
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
        cpu = server.cpu_seconds() - cpu0
        busy = core_busy_seconds(SERVER_CORE) - busy0
        r = wrk_result(done.returncode, done.stdout, done.stderr)
        errors = socket_errors(r) + r["status"]
        if r["requests"] > 0 or errors > 0 or attempts == 2:
            break
    requests = max(r["requests"], 1)
    return {
        "requests": r["requests"],
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1e3,
        "p90_ms": r["p90_us"] / 1e3,
        "p99_ms": r["p99_us"] / 1e3,
        "max_ms": r["max_us"] / 1e3,
        "non_2xx": r["status"],
        "socket_errors": socket_errors(r),
        "cpu_us_per_req": cpu * 1e6 / requests,
        "server_cpu_s": cpu,
        "other_cpu_on_server_core_s": max(busy - cpu, 0.0),
        "duration_s": r["duration_us"] / 1e6,
        "attempts": attempts,
    }


def load_runs(
    servers: dict[str, Server],
    lua: dict[str, Path],
    concurrency: Sequence[int],
    rounds: int,
    seconds: int,
    warmup: int,
    notes: list[str],
) -> list[dict[str, Any]]:
    cells = [
        (model, c, [k for k, s in servers.items() if model in s.spec.models])
        for model in MODELS
        for c in concurrency
    ]
    dead: set[str] = set()

    def attempt(key: str, model: str, c: int, secs: int) -> dict[str, Any] | None:
        """One run; a server that died is noted and left out of the remaining runs."""
        if key in dead:
            return None
        server = servers[key]
        try:
            return run_wrk(server, model, lua[model], c, secs)
        except RuntimeError as exc:
            proc = server.proc
            if key == FLOOR or proc is None or proc.poll() is None:
                raise
            dead.add(key)
            notes.append(
                f"{key} exited ({proc.returncode}) during the load runs ({model}, c={c}): "
                f"{exc}; server log: {server.log_tail()}"
            )
            print(f"{key} exited ({proc.returncode}); log tail:\n{server.log_tail()}", flush=True)
            return None

    print(f"\nwarm-up: {warmup}s per server, model and concurrency", flush=True)
    for model, c, keys in cells:
        for key in keys:
            attempt(key, model, c, warmup)
    samples: dict[tuple[str, str, int], dict[int, dict[str, Any]]] = {}
    for r in range(rounds):
        print(f"round {r + 1}/{rounds} ({len(cells)} cells × {seconds}s each server)", flush=True)
        for model, c, keys in cells:
            for i in range(len(keys)):
                key = keys[(r + i) % len(keys)]
                run = attempt(key, model, c, seconds)
                if run is not None:
                    samples.setdefault((key, model, c), {})[r] = run
    rows = []
    for (key, model, c), by_round in samples.items():
        runs = list(by_round.values())
        floor = samples.get((FLOOR, model, c), {})
        paired = [r for r in by_round if r in floor]
        row: dict[str, Any] = {
            "server": key,
            "model": model,
            "concurrency": c,
            **{m: median([x[m] for x in runs]) for m in METRICS},
            "non_2xx": sum(x["non_2xx"] for x in runs),
            "socket_errors": sum(x["socket_errors"] for x in runs),
            "requests": sum(x["requests"] for x in runs),
            "rounds": len(runs),
            "other_cpu_share": median(
                [x["other_cpu_on_server_core_s"] / x["duration_s"] for x in runs]
            ),
            "runs": runs,
        }
        if paired:
            row["vs_floor"] = {
                m: paired_ratio([by_round[r][m] for r in paired], [floor[r][m] for r in paired])
                for m in METRICS
            }
        rows.append(row)
    return rows


METRICS = ("rps", "p50_ms", "p90_ms", "p99_ms", "cpu_us_per_req")


# -- in-process references ---------------------------------------------------------------------


class PInput(BaseModel):
    """The OIP request as pydantic models (what the FastAPI baseline validates)."""

    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class PRequest(BaseModel):
    inputs: list[PInput]


class MInput(msgspec.Struct):
    """The OIP request as msgspec Structs (typed decoding)."""

    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class MRequest(msgspec.Struct):
    inputs: list[MInput]


@contextmanager
def pinned(core: int) -> Iterator[None]:
    """Run this process on ``core`` meanwhile (the server's core, for in-process references)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def raw_predict(
    registry: Any, rows: np.ndarray, rounds: int, round_s: float
) -> dict[str, dict[str, float]]:
    """Seconds per call at one row: Predictor.predict(matrix), a bare session.run on a feed
    built once, and the bare app's whole per-request work (orjson in, run, orjson out)."""
    import tandem
    from serving_baselines._models import Served, oip_infer

    out = {}
    one = np.ascontiguousarray(rows[:1])
    body = oip_body(one)
    for name in MODELS:
        predictor = tandem.load(name, registry=registry, threads=1)
        session = predictor._session
        feed = {session.get_inputs()[0].name: np.ascontiguousarray(one.T)}
        outputs = [predictor.manifest.output]
        served = Served(
            name, session, session.get_inputs()[0].name, outputs[0], N_FEATURES, predictor
        )
        timers = {
            "predict": Timer(lambda p=predictor: p.predict(one)),
            "session_run": Timer(lambda s=session, f=feed, o=outputs: s.run(o, f)),
            "bare_app_work": Timer(lambda m=served: oip_infer(m, body)),
        }
        with pinned(SERVER_CORE):
            samples = interleaved(timers, rounds=rounds, round_s=round_s)
        out[name] = {k: median(v) for k, v in samples.items()}
    return out


def codec_bench(rows: np.ndarray, rounds: int, round_s: float) -> list[dict[str, Any]]:
    """µs to decode the OIP request body and to encode the response, per JSON codec."""
    typed = msgspec.json.Decoder(MRequest)
    untyped = msgspec.json.Decoder()
    encoder = msgspec.json.Encoder()
    results = []
    for n in (1, 64):
        body = oip_body(np.ascontiguousarray(rows[:n]))
        proba = np.full((n, 2), 0.123456789012345)

        def response(data: Any, n: int = n) -> dict[str, Any]:
            shape = [n, 2]
            out = {"name": "probabilities", "shape": shape, "datatype": "FP64", "data": data}
            return {"model_name": "w1", "outputs": [out]}

        decode = {
            "json": Timer(lambda b=body: json.loads(b)),
            "orjson": Timer(lambda b=body: orjson.loads(b)),
            "msgspec": Timer(lambda b=body: untyped.decode(b)),
            "msgspec_struct": Timer(lambda b=body: typed.decode(b)),
            "pydantic": Timer(lambda b=body: PRequest.model_validate_json(b)),
        }
        encode = {
            "json": Timer(lambda p=proba: json.dumps(response(p.ravel().tolist())).encode()),
            "orjson": Timer(
                lambda p=proba: orjson.dumps(response(p.ravel()), option=orjson.OPT_SERIALIZE_NUMPY)
            ),
            "msgspec": Timer(lambda p=proba: encoder.encode(response(p.ravel().tolist()))),
        }
        with pinned(SERVER_CORE):
            dec = interleaved(decode, rounds=rounds, round_s=round_s)
            enc = interleaved(encode, rounds=rounds, round_s=round_s)
        response_bytes = len(orjson.dumps(response(proba.ravel().tolist())))
        for step, samples, size in (
            ("decode request", dec, len(body)),
            ("encode response", enc, response_bytes),
        ):
            results.append(
                {
                    "step": step,
                    "rows": n,
                    "body_bytes": size,
                    "us": {k: median(v) * 1e6 for k, v in samples.items()},
                    "vs_json": {k: paired_ratio(v, samples["json"]) for k, v in samples.items()},
                }
            )
    return results


def startup(spec: ServerSpec, env: dict[str, str], log_dir: Path, starts: int) -> dict[str, Any]:
    """Seconds from spawn to the first 200 on the readiness path, and RSS when ready."""
    times, rss = [], []
    for _ in range(starts):
        server = Server(spec, env, log_dir)
        try:
            times.append(server.start())
            rss.append(server.rss()["tree"])
        finally:
            server.stop()
    return {"ready_s": times, "ready_s_median": median(times), "rss_ready_bytes": rss}


def smoke(server: Server, body: bytes) -> dict[str, Any]:
    """One request per model before any load: 200 and an ``outputs`` list, else fail loudly."""
    seen = {}
    for model in server.spec.models:
        status, raw = http_request(server.port, "POST", f"/v2/models/{model}/infer", body)
        if status != 200 or "outputs" not in json.loads(raw or b"{}"):
            raise RuntimeError(f"{server.spec.key}/{model}: HTTP {status}: {raw[:300]!r}")
        seen[model] = json.loads(raw)
    return seen


# -- report ------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> None:
    print("\nServer descriptions:")
    for key, info in results["servers"].items():
        print(f"  {key:15s} {info['describe']}")
    for note in results["notes"]:
        short = note if len(note) < 400 else note[:200] + " … " + note[-200:]
        print(f"  note: {short}")

    print(
        f"\nClosed loop (wrk -t1 on core {LOAD_CORE}; server on core {SERVER_CORE}); medians of "
        f"{results['settings']['rounds']} round(s) of {results['settings']['seconds']}s; "
        f"×floor = median of per-round ratios against {FLOOR}\n"
    )
    rows = []
    for r in results["load"]:
        v = r.get("vs_floor", {})
        rows.append(
            [
                r["server"],
                r["model"],
                r["concurrency"],
                f"{r['rps']:.0f}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['cpu_us_per_req']:.0f}",
                r["non_2xx"],
                r["socket_errors"],
                f"{v['rps']:.2f}" if v else "-",
                f"{v['p50_ms']:.2f}" if v else "-",
                f"{v['p99_ms']:.2f}" if v else "-",
                f"{v['cpu_us_per_req']:.2f}" if v else "-",
                f"{r['other_cpu_share']:.0%}",
            ]
        )
    rows.sort(key=lambda x: (MODELS.index(str(x[1])), int(x[2]), _order(results, str(x[0]))))
    headers = ["server", "model", "c", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "non-2xx"]
    headers += ["sock err", "req/s ×floor", "p50 ×floor", "p99 ×floor", "CPU ×floor", "other"]
    print(text_table(headers, rows))
    print(
        f"other = share of core {SERVER_CORE} busy outside the server during the run (median): "
        "other processes on this shared machine, and kernel network work not charged to it"
    )

    print("\nStartup (spawn → first 200 on /v2/health/ready) and memory (VmRSS, process tree)\n")
    rows = []
    for key, info in results["servers"].items():
        rows.append(
            [
                key,
                f"{info['ready_s']:.2f}" if info.get("ready_s") is not None else "-",
                f"{info['rss_after_load_bytes']['tree'] / 2**20:.0f}"
                if "rss_after_load_bytes" in info
                else "-",
                f"{info['rss_after_load_bytes']['main'] / 2**20:.0f}"
                if "rss_after_load_bytes" in info
                else "-",
            ]
        )
    print(text_table(["server", "ready s", "RSS MB (tree)", "RSS MB (main)"], rows))
    if "tandem_startup" in results:
        st = results["tandem_startup"]
        print(
            f"tandem serve, {len(st['ready_s'])} fresh starts: ready in "
            + ", ".join(f"{t:.2f}" for t in st["ready_s"])
            + f" s (median {st['ready_s_median']:.2f} s); RSS when ready "
            + ", ".join(f"{b / 2**20:.0f}" for b in st["rss_ready_bytes"])
            + " MB"
        )

    print("\nIn-process, one row, pinned to the server core: µs per call (median of rounds)\n")
    rows = [
        [
            m,
            f"{s['predict'] * 1e6:.1f}",
            f"{s['session_run'] * 1e6:.1f}",
            f"{s['bare_app_work'] * 1e6:.1f}",
        ]
        for m, s in results["raw_predict"].items()
    ]
    print(
        text_table(
            ["model", "Predictor.predict", "session.run", "bare app work (orjson+run)"], rows
        )
    )

    print("\nJSON codecs, µs per call (ratio to stdlib json), pinned to the server core\n")
    names = ["json", "orjson", "msgspec", "msgspec_struct", "pydantic"]
    rows = []
    for r in results["codecs"]:
        cells = [
            f"{r['us'][k]:.1f} ({r['vs_json'][k]:.2f})" if k in r["us"] else "-" for k in names
        ]
        rows.append([r["step"], r["rows"], r["body_bytes"], *cells])
    print(text_table(["step", "rows", "body B", *names], rows))

    print("\nGoals\n")
    rows = [
        [g["goal"], g["measured"], "met" if g["met"] else "MISSED"]
        if g["met"] is not None
        else [g["goal"], g["measured"], "n/a"]
        for g in results["goals"]
    ]
    print(text_table(["goal", "measured", "verdict"], rows))


def _order(results: dict[str, Any], key: str) -> int:
    return list(results["servers"]).index(key)


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    cell = {(r["server"], r["model"], r["concurrency"]): r for r in results["load"]}
    out: list[dict[str, Any]] = []

    def add(goal: str, measured: str, met: bool | None) -> None:
        out.append({"goal": goal, "measured": measured, "met": met})

    server = "tandem" if "tandem" in results["servers"] else None
    if server is None:
        add("tandem rows", "tandem serve not available: goals not measured", None)
        return out
    w1 = [r for (s, m, _), r in cell.items() if s == server and m == "w1"]
    if w1:
        best = max(w1, key=lambda r: r["rps"])
        add(
            f"W1 capacity ≥ {GOALS['capacity_w1_min_rps']:.0f} req/s on one core",
            f"{best['rps']:.0f} req/s (c={best['concurrency']}, "
            f"{best['cpu_us_per_req']:.0f} CPU µs/req; other {best['other_cpu_share']:.0%})",
            best["rps"] >= GOALS["capacity_w1_min_rps"],
        )
        floor = [r for (s, m, _), r in cell.items() if s == FLOOR and m == "w1"]
        if floor:
            top = max(floor, key=lambda r: r["rps"])
            add(
                "W1 capacity above the bare-uvicorn floor",
                f"{best['rps']:.0f} vs {top['rps']:.0f} req/s ({best['rps'] / top['rps']:.2f}×)",
                best["rps"] > top["rps"],
            )
    for model in MODELS:
        one = cell.get((server, model, 1))
        raw = results["raw_predict"].get(model)
        if one is not None and raw is not None:
            limit = raw["predict"] * 1e3 + GOALS["p50_c1_over_raw_max_ms"]
            add(
                f"{model} p50 at c=1 ≤ raw predict + 0.2 ms ({limit:.3f} ms)",
                f"{one['p50_ms']:.3f} ms (raw {raw['predict'] * 1e3:.3f} ms, "
                f"+{one['p50_ms'] - raw['predict'] * 1e3:.3f} ms; other {one['other_cpu_share']:.0%})",
                one["p50_ms"] <= limit,
            )
    for model in MODELS:
        high = cell.get((server, model, 64))
        if high is not None:
            add(
                f"{model} p99 at c=64 ≤ {GOALS['p99_c64_max_ms']:.0f} ms",
                f"{high['p99_ms']:.2f} ms (other {high['other_cpu_share']:.0%})",
                high["p99_ms"] <= GOALS["p99_c64_max_ms"],
            )
    st = results.get("tandem_startup")
    if st:
        add(
            f"ready ≤ {GOALS['ready_max_s']} s after start",
            f"{st['ready_s_median']:.2f} s (median of {len(st['ready_s'])})",
            st["ready_s_median"] <= GOALS["ready_max_s"],
        )
    rss = results["servers"][server].get("rss_after_load_bytes")
    if rss:
        mb = rss["tree"] / 2**20
        add(
            f"RSS ≤ {GOALS['rss_max_mb']:.0f} MB (after load, both models)",
            f"{mb:.0f} MB",
            mb <= GOALS["rss_max_mb"],
        )
    return out


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~2 min smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; quick 1)")
    parser.add_argument(
        "--seconds", type=int, default=None, help="seconds per wrk run (default 4; quick 2)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per cell")
    parser.add_argument(
        "--concurrency", default=None, help="comma-separated connections (default 1,8,64)"
    )
    parser.add_argument("--rows", type=int, default=4000, help="training rows")
    parser.add_argument(
        "--time-budget", type=float, default=None, help="training seconds per model (20; quick 5)"
    )
    parser.add_argument(
        "--starts", type=int, default=None, help="fresh starts of tandem serve (3; quick 2)"
    )
    parser.add_argument("--no-tandem", action="store_true", help="measure the baselines only")
    parser.add_argument(
        "--servers",
        default=None,
        help=f"comma-separated subset of servers to run ({FLOOR} is always included)",
    )
    parser.add_argument(
        "--no-alternatives",
        action="store_true",
        help="skip the granian / RSGI / tandem-under-uvicorn rows",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    seconds = args.seconds or (2 if quick else 4)
    budget = args.time_budget or (5.0 if quick else 20.0)
    starts = args.starts or (2 if quick else 3)
    concurrency = tuple(int(c) for c in (args.concurrency or "1,8,64").split(","))
    if load_test_unavailable():
        return 2
    started = time.perf_counter()

    import tandem

    have_tandem = not args.no_tandem and importlib.util.find_spec("tandem.serving") is not None
    have_asgi = have_tandem and importlib.util.find_spec("tandem.serving.asgi") is not None
    notes = []
    if not have_tandem:
        notes.append(
            "tandem rows skipped: "
            + ("--no-tandem" if args.no_tandem else "tandem.serving does not exist yet")
        )
    elif not have_asgi and not args.no_alternatives:
        notes.append("tandem-uvicorn row skipped: tandem.serving.asgi does not exist")

    table, rows_eval = make_data(args.rows)
    body = oip_body(np.ascontiguousarray(rows_eval[:1]))
    results: dict[str, Any] = {
        "script": SCRIPT,
        "quick": quick,
        "settings": {
            "rows": args.rows,
            "time_budget": budget,
            "rounds": rounds,
            "seconds": seconds,
            "warmup": args.warmup,
            "concurrency": list(concurrency),
            "starts": starts,
            "server_core": SERVER_CORE,
            "load_core": LOAD_CORE,
            "request_body": body.decode(),
        },
        "goals_config": GOALS,
        "notes": notes,
        "servers": {},
    }

    servers: dict[str, Server] = {}
    with tempfile.TemporaryDirectory(prefix="tandem-bench-serving-") as tmp:
        home = Path(tmp) / "home"
        registry = tandem.Registry(tandem.Settings(home=home))
        try:
            results["models"] = train_models(registry, table, budget)
            micro_rounds, micro_s = (3, 0.05) if quick else (7, 0.1)
            print("timing in-process references ...", flush=True)
            results["raw_predict"] = raw_predict(registry, rows_eval, micro_rounds, micro_s)
            results["codecs"] = codec_bench(rows_eval, micro_rounds, micro_s)
        finally:
            registry.close()

        src = Path(tandem.__file__).resolve().parent.parent
        env = {
            **os.environ,
            "TANDEM_HOME": str(home),
            "PYTHONPATH": os.pathsep.join(
                [str(src), str(BENCH_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            "BENCH_SERVE_MODELS": " ".join(MODELS),
            "TANDEM_SERVE_MODELS": " ".join(MODELS),
        }
        log_dir = Path(tmp) / "logs"
        log_dir.mkdir()
        lua = wrk_scripts(Path(tmp), dict.fromkeys(MODELS, body))

        specs = server_specs(have_tandem, have_asgi, not args.no_alternatives)
        if args.servers:
            wanted = {*args.servers.split(","), FLOOR}
            specs = [s for s in specs if s.key in wanted]
        try:
            if specs[0].key == "tandem":
                print(f"timing {starts} fresh starts of tandem serve ...", flush=True)
                try:
                    results["tandem_startup"] = startup(specs[0], env, log_dir, starts)
                except RuntimeError as exc:
                    notes.append(f"tandem serve failed to start: {exc}")
                    specs = [s for s in specs if s.key != "tandem"]
            for spec in specs:
                server = servers[spec.key] = Server(spec, env, log_dir)
                try:
                    ready = server.start()
                    results["servers"][spec.key] = {
                        "describe": spec.describe,
                        "argv": spec.argv(server.port),
                        "models": list(spec.models),
                        "ready_s": ready,
                        "first_response": smoke(server, body),
                    }
                    print(f"started {spec.key} on :{server.port} in {ready:.2f}s", flush=True)
                except (RuntimeError, OSError, ValueError, http.client.HTTPException) as exc:
                    servers.pop(spec.key).stop()
                    results["servers"].pop(spec.key, None)
                    if spec.key == FLOOR:
                        raise
                    notes.append(f"{spec.key} skipped: {exc}")
                    print(f"{spec.key} skipped: {exc}", flush=True)
            results["load"] = load_runs(
                servers, lua, concurrency, rounds, seconds, args.warmup, notes
            )
            for key, server in servers.items():
                if server.proc is None or server.proc.poll() is not None:
                    continue
                results["servers"][key]["rss_after_load_bytes"] = server.rss()
                results["servers"][key]["log_tail"] = server.log_tail(600)
        finally:
            for server in servers.values():
                server.stop()

    results["goals"] = goals(results)
    report(results)
    save_results(SCRIPT, results, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
