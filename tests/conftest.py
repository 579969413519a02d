import os
from pathlib import Path

import pytest

# Offline and quiet by default: nothing in the tests may reach the network.
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# One OpenMP thread in test subprocesses too (CLI and server tests): the suite runs tiny models on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real COCO-format folders beside the repo; tests using it skip where it is absent."""
    if not (SHARED_DATA / "coco128-train" / "annotations.json").is_file():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models on a shared CPU: one thread for the whole session avoids OpenMP
    oversubscription (5x faster here, and what the suite's time budget assumes)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server for the whole session (each start costs ~20-40 s here)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """One store per module (importing mlflow and creating the database are the slow parts)."""
    root = tmp_path_factory.mktemp("tracking")
    home, cwd = root / "home", root / "cwd"
    home.mkdir()
    cwd.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("SNAPPER_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.chdir(cwd)
    from snapper.mlops import registry, tracking

    previous_uri = tracking.mlflow.get_tracking_uri() if "MLFLOW_TRACKING_URI" in os.environ else None
    uri = tracking.configure()
    yield {"tracking": tracking, "registry": registry, "home": home, "cwd": cwd, "uri": uri}
    mp.undo()
    if previous_uri:
        tracking.mlflow.set_tracking_uri(previous_uri)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A small JPEG with one orange rectangle at x 20..70, y 10..40 on black."""
    import numpy as np
    from PIL import Image

    arr = np.zeros((60, 90, 3), dtype=np.uint8)
    arr[10:40, 20:70] = (200, 100, 50)
    path = tmp_path / "photo.jpg"
    Image.fromarray(arr).save(path, quality=95)
    return path
