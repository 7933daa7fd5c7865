"""The web app: a FastAPI app serving one static page (tabs) and a JSON API that calls the library / CLI.

Chat uses the serve engine (`mmadapt.serve.engine.ChatEngine`, loaded once per model+index); Train, Merge,
Edit, Evaluate and Lineage run the `mmadapt` CLI in a subprocess (`mmadapt.ui.jobs`)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from mmadapt.errors import ConfigError, DataError
from mmadapt.ui.jobs import Jobs, read_log

STATIC = Path(__file__).parent / "static"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def create_app(workdir: str | Path = ".") -> Any:
    """Build the ASGI app; `workdir` is where subprocess runs start (relative paths in YAML resolve there)."""
    from fastapi import Body, FastAPI, HTTPException
    from fastapi.responses import FileResponse, HTMLResponse

    work = Path(workdir).resolve()
    jobs = Jobs()
    engines: dict[tuple[str, str], Any] = {}
    app = FastAPI(title="mmadapt")

    def bad(message: str) -> HTTPException:
        return HTTPException(status_code=400, detail=message)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return (STATIC / "index.html").read_text()

    @app.post("/api/chat")
    def chat(req: dict = Body(...)) -> dict[str, Any]:
        from mmadapt.serve.engine import ChatEngine, SamplingParams

        model, index = str(req.get("model") or ""), str(req.get("index") or "")
        if not model or not Path(model).is_dir():
            raise bad(f"model: {model!r} is not a directory")
        if index and not Path(index).is_dir():
            raise bad(f"index: {index!r} is not a directory")
        key = (model, index)
        if key not in engines:
            try:
                engines[key] = ChatEngine.from_directory(model, index or None)
            except (ConfigError, DataError) as e:
                raise bad(str(e)) from None
        parts: list[dict[str, Any]] = [{"type": "text", "text": str(req.get("message") or "")}]
        if req.get("image"):  # a data: URL from the file input
            parts.append({"type": "image_url", "image_url": {"url": req["image"]}})
        if req.get("audio"):
            parts.append({"type": "input_audio", "input_audio": {"data": req["audio"].split(",", 1)[-1],
                                                                 "format": req.get("audio_format", "wav")}})
        try:
            result = engines[key].chat([{"role": "user", "content": parts}],
                                       SamplingParams(max_tokens=int(req.get("max_tokens") or 16)),
                                       retrieve=bool(req.get("retrieve", True)))
        except (ConfigError, DataError) as e:
            raise bad(str(e)) from None
        return {"text": result.text, "citations": [c.to_dict() for c in result.citations]}

    @app.get("/api/examples")
    def examples() -> dict[str, str]:
        return {p.name: p.read_text() for p in sorted(EXAMPLES.glob("*.yaml"))} if EXAMPLES.is_dir() else {}

    def write_config(kind: str, text: str) -> Path:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise bad(f"{kind} YAML: {e}") from None
        if not isinstance(data, dict):
            raise bad(f"{kind} YAML: expected a mapping of fields")
        path = work / f".mmadapt-ui-{kind}.yaml"
        path.write_text(text)
        return path

    def start(kind: str, args: list[str]) -> dict[str, Any]:
        try:
            jobs.start(kind, args, work)
        except RuntimeError as e:
            raise HTTPException(status_code=409, detail=str(e)) from None
        return jobs.status(kind)

    @app.post("/api/train/start")
    def train_start(req: dict = Body(...)) -> dict[str, Any]:
        path = write_config("train", str(req.get("yaml") or ""))
        return start("train", ["train", str(path)] + (["--resume"] if req.get("resume") else ["--overwrite"]))

    @app.post("/api/{kind}/stop")
    def stop(kind: str) -> dict[str, Any]:
        return {"stopped": jobs.stop(kind), **jobs.status(kind)}

    @app.post("/api/train/status")
    def train_status(req: dict = Body(...)) -> dict[str, Any]:
        status = jobs.status("train")
        try:
            out = work / str((yaml.safe_load(str(req.get("yaml") or "")) or {}).get("output_dir", ""))
        except yaml.YAMLError:
            return status
        log = read_log(out) or read_log(out / "checkpoints")
        status["loss"] = [[r.get("step"), r["loss"]] for r in log if isinstance(r.get("loss"), (int, float))]
        last = log[-1] if log else {}
        status["progress"] = [last.get("step", 0), last.get("max_steps") or last.get("total_steps") or 0]
        metrics = out / "metrics.json"
        status["metrics"] = json.loads(metrics.read_text()) if status["state"] == "finished" and metrics.exists() else None
        return status

    @app.post("/api/merge/start")
    def merge_start(req: dict = Body(...)) -> dict[str, Any]:
        path = write_config("merge", str(req.get("yaml") or ""))
        return start("merge", ["merge", str(path), "--out", str(req.get("out") or "merged"), "--overwrite"])

    @app.post("/api/edit/start")
    def edit_start(req: dict = Body(...)) -> dict[str, Any]:
        args = str(req.get("args") or "").split()
        if not args:
            raise bad("args: give the `mmadapt edit` arguments, e.g. `apply --model M --out OUT`")
        rows = [r for r in req.get("requests") or [] if isinstance(r, dict) and r.get("subject")]
        if args[0] == "apply" and "--edits" not in args and rows:  # the page's table becomes edits.jsonl
            path = work / ".mmadapt-ui-edits.jsonl"
            path.write_text("".join(json.dumps({k: str(r.get(k, "")) for k in ("subject", "prompt", "target_new")}) + "\n"
                                    for r in rows))
            args += ["--edits", str(path)]
        return start("edit", ["edit", *args])

    @app.post("/api/eval/start")
    def eval_start(req: dict = Body(...)) -> dict[str, Any]:
        path = write_config("eval", str(req.get("yaml") or ""))
        return start("eval", ["eval", str(path)])

    @app.get("/api/{kind}/status")
    def status(kind: str) -> dict[str, Any]:
        return jobs.status(kind)

    @app.get("/api/metrics")
    def metrics(dir: str) -> dict[str, Any]:
        d = work / dir
        if not (d / "metrics.json").exists():
            raise bad(f"{d}/metrics.json: not found")
        return {"metrics": json.loads((d / "metrics.json").read_text()), "report": (d / "report.html").exists()}

    @app.get("/api/report")
    def report(dir: str) -> Any:
        path = work / dir / "report.html"
        if not path.exists():
            raise bad(f"{path}: not found")
        return FileResponse(path)

    @app.get("/api/manifest")
    def manifest(dir: str) -> dict[str, Any]:
        path = work / dir / "manifest.json"
        if not path.exists():
            raise bad(f"{path}: not found")
        return json.loads(path.read_text())

    @app.get("/api/lineage")
    def lineage(dir: str, verify: bool = False) -> dict[str, Any]:
        argv = [sys.executable, "-m", "mmadapt.cli", "lineage", dir] + (["--verify"] if verify else [])
        done = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=300)
        from mmadapt.lineage import lineage_rows, read_manifest

        try:
            manifest = read_manifest(work / dir)
        except DataError:
            manifest = None
        return {"exit": done.returncode, "output": done.stdout + done.stderr,
                "chain": lineage_rows(manifest) if manifest else []}

    @app.get("/api/image")
    def image(path: str) -> Any:
        """A PNG a job wrote inside the working directory (the causal-trace heat map), never a file outside it."""
        from mmadapt.io import contained_path

        try:
            file = contained_path(work, path, "path", DataError)
        except DataError as e:
            raise bad(str(e)) from None
        if file.suffix.lower() != ".png" or not file.is_file():
            raise bad(f"{path}: not a PNG in {work}")
        return FileResponse(file, media_type="image/png")

    @app.on_event("shutdown")
    def _close() -> None:
        jobs.close()
        for engine in engines.values():
            engine.close()

    return app
