"""``imagebridge demo``: both services with synthetic data, on loopback, until Ctrl-C.

First start seeds the demo hospital (apps.seed); later starts reuse the data folder unless
``--reset``. Writes ``<data-dir>/demo.json`` (ARCHITECTURE.md; README "Quick start").
"""

from __future__ import annotations

import json
import shutil
import signal
import threading
from pathlib import Path
from types import FrameType

from imagebridge.apps.seed import manifest, seed_all, write_manifest
from imagebridge.apps.stack import LocalStack

TRY_THIS = """
imagebridge demo is running.

  EHR (SMART + FHIR R4)   {fhir}
  SMART configuration     {fhir}/.well-known/smart-configuration
  Imaging (DICOMweb)      {dicomweb}
  Manifest                {manifest}

Try this (a backend client fetches Alice's studies with one token):

  .venv/bin/python examples/fetch_study.py {manifest}

Ctrl-C stops both services.
"""


def run_demo(*, ehr_port: int, imaging_port: int, data_dir: Path, reset: bool) -> int:
    data_dir = data_dir.resolve()
    if reset and data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(data_dir, ehr_port=ehr_port, imaging_port=imaging_port)
    manifest_path = data_dir / "demo.json"
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stack.provision()
    try:
        stack.start()
        if not manifest_path.exists():
            print("Seeding the demo hospital (first start) ...", flush=True)
            write_manifest(manifest_path, manifest(stack, seed_all(stack)))
        data = json.loads(manifest_path.read_text())
        print(
            TRY_THIS.format(
                fhir=data["ehr"]["fhir_base"],
                dicomweb=data["imaging"]["dicomweb_base"],
                manifest=manifest_path,
            ),
            flush=True,
        )
        while not stop.wait(0.5):
            for service in (stack.ehr, stack.imaging):
                if service is not None and service.process.poll() is not None:
                    print(f"{service.name} stopped unexpectedly; see {service.log_path}", flush=True)
                    return 1
    finally:
        stack.stop()
    return 0
