"""The one module that talks to MLflow (DESIGN §6).

Default store: ``sqlite:///runs/mlflow.db`` with artifacts under ``runs/mlartifacts``;
``MLFLOW_TRACKING_URI`` (or the spec's ``tracking.uri``) overrides. One experiment per spec, a
parent run per comparison, nested child runs per method and per Optuna trial.

Metric names (one scheme, built here and nowhere else):
    ``stage/<name>``                 step = stage index
    ``train/<name>``                 step = global optimizer step
    ``eval/<bench>/<task>/<length>`` and ``eval/<bench>/avg/<length>``
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Iterator

DEFAULT_DB = "runs/mlflow.db"
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-./ ]")


def default_uri(root: Path | str = ".") -> str:
    return f"sqlite:///{(Path(root) / DEFAULT_DB).resolve()}"


def resolve_uri(spec_uri: str | None = None, root: Path | str = ".") -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or spec_uri or default_uri(root)


def uri_origin(uri: str, otherwise: str = "tracking URI") -> str:
    """Where a resolved URI came from, for messages: the environment or ``otherwise``."""
    return "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") == uri else otherwise


# Schemes every MLflow install takes ('' is a local folder); others are asked of MLflow itself.
_BUILTIN_SCHEMES = {"", "file", "sqlite", "http", "https", "postgresql", "mysql", "mssql"}
_URI_FORMS = "sqlite:///PATH.db, http(s)://HOST:PORT or a folder path"


class UnsupportedTrackingURI(ValueError):
    """A tracking URI MLflow cannot open (its scheme, or a malformed ``sqlite:`` URI)."""


def _mlflow_schemes() -> set[str]:
    """Schemes both MLflow's tracking and model-registry stores take (plugins included)."""
    from mlflow.tracking._model_registry.utils import _get_store_registry
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    return set(_tracking_store_registry._registry) & set(_get_store_registry()._registry)


def _file_store_allowed() -> bool:
    """MLflow 3 refuses folder stores (``mlruns``) unless MLFLOW_ALLOW_FILE_STORE is true."""
    try:
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
    except ImportError:                   # older MLflow: folder stores open
        return True
    return bool(MLFLOW_ALLOW_FILE_STORE.get())


def check_uri(uri: str, origin: str = "tracking URI") -> None:
    """Fail, before any work, on a URI whose scheme MLflow does not support (``sqlit:///``)."""
    from urllib.parse import urlparse

    if not isinstance(uri, str) or not uri.strip():
        raise UnsupportedTrackingURI(f"{origin}: empty tracking URI; expected {_URI_FORMS}")
    scheme = urlparse(uri).scheme
    if len(scheme) == 1:                 # a Windows drive letter: a local path
        scheme = ""
    if uri in {"databricks", "databricks-uc", "uc"}:
        return
    if scheme not in _BUILTIN_SCHEMES:
        try:
            known = _mlflow_schemes()
        except (ImportError, AttributeError):   # MLflow moved its registries: the built-ins
            known = set(_BUILTIN_SCHEMES)
        if scheme not in known:
            from harness.registry import did_you_mean

            shown = sorted(s for s in known if s)
            raise UnsupportedTrackingURI(
                f"{origin} '{uri}': MLflow does not support the scheme '{scheme}'"
                f"{did_you_mean(scheme, shown, 1)} (supported: {', '.join(shown)}; "
                f"e.g. {_URI_FORMS})")
    if scheme in ("", "file") and not _file_store_allowed():
        raise UnsupportedTrackingURI(
            f"{origin} '{uri}': this MLflow opens no folder store unless "
            f"MLFLOW_ALLOW_FILE_STORE=true (`mlflow migrate-filestore` converts one); use "
            f"sqlite:///PATH.db")
    if scheme == "sqlite" and not uri.startswith("sqlite:///"):
        raise UnsupportedTrackingURI(
            f"{origin} '{uri}': a SQLite store is written sqlite:///PATH.db (three slashes, "
            f"then a relative path; four for an absolute one)")


def stage_key(name: str) -> str:
    return f"stage/{name}"


def train_key(name: str) -> str:
    return f"train/{name}"


def eval_key(bench: str, task: str, length: int | str) -> str:
    return f"eval/{bench}/{task}/{length}"


def eval_avg_key(bench: str, length: int | str) -> str:
    # "<bench>/<label>": a labelled partial average (avg11 = 11 of RULER's 13 tasks), as
    # harness.evaluation.runner.compare_averages keys it -> eval/<bench>/avg11/<length>
    bench, _, label = bench.partition("/")
    return eval_key(bench, label or "avg", length)


def _clean(key: str) -> str:
    return _KEY_BAD.sub("_", key)


_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|CREDENTIAL", re.I)


def environ_snapshot() -> dict[str, str]:
    """A copy of ``os.environ`` that survives another thread changing it meanwhile (MLflow's
    telemetry thread sets and unsets a variable: iterating ``os.environ`` then raises
    ``KeyError`` for a key removed between the listing and the lookup)."""
    for _ in range(10):
        try:
            return dict(os.environ)
        except (KeyError, RuntimeError):
            continue
    return {}


def _secrets() -> list[str]:
    """Values of environment variables named like secrets (8+ characters)."""
    return [v for k, v in environ_snapshot().items() if _SECRET_NAME.search(k) and len(v) >= 8]


def redact(obj: Any, secrets: list[str] | None = None) -> Any:
    """``obj`` with every occurrence of a secret from the environment replaced by ``***``:
    nothing logged to a tracking store (params, tags, config artifacts) carries one."""
    secrets = _secrets() if secrets is None else secrets
    if not secrets:
        return obj
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, "***")
        return obj
    if isinstance(obj, dict):
        return {k: redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, secrets) for v in obj)
    return obj


def spool_dir() -> Path:
    """Where metrics wait when the tracking server cannot be reached (``policylong sync``)."""
    return Path(os.environ.get("POLICYLONG_SPOOL_DIR", "runs/spool"))


def _spool_file(run_id: str) -> Path:
    return spool_dir() / f"{run_id}.jsonl"


def _upload_spooled(client, path: Path) -> int:
    """Send one spool file's metrics to its run; the file is removed once they are stored."""
    import json

    from mlflow.entities import Metric

    run_id = path.stem
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    batch = [Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in rows]
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i:i + 1000])
    path.unlink()
    return len(batch)


def sync_spool(uri: str | None = None) -> dict[str, int]:
    """Upload every spooled metric (``policylong sync``): {run id: metrics sent}."""
    from mlflow.tracking import MlflowClient

    uri = uri or resolve_uri()
    check_uri(uri, uri_origin(uri))
    client = MlflowClient(tracking_uri=uri)
    sent = {}
    for path in sorted(spool_dir().glob("*.jsonl")):
        sent[path.stem] = _upload_spooled(client, path)
    return sent


class UnknownRun(KeyError):
    """A run id the tracking store does not hold."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


class Tracker:
    """A handle on one MLflow run (or a no-op when ``run_id`` is None).

    Metrics never stop the work that logs them: when the store cannot be reached (after
    MLflow's own retries) they are appended to ``runs/spool/<run id>.jsonl`` and sent before
    the next metrics once the store answers again, or by ``policylong sync``."""

    def __init__(self, client, run_id: str | None):
        self.client, self.run_id = client, run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.run_id is None or not metrics:
            return
        import json
        import sys
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(_clean(k), float(v), ts, int(step)) for k, v in metrics.items()]
        spool = _spool_file(self.run_id)
        try:
            if spool.exists():
                _upload_spooled(self.client, spool)
            self.client.log_batch(self.run_id, metrics=batch)
            return
        except Exception as exc:  # noqa: BLE001 - any store failure: keep the metrics locally
            first = not spool.exists()
            spool.parent.mkdir(parents=True, exist_ok=True)
            with spool.open("a", encoding="utf-8") as f:
                for m in batch:
                    f.write(json.dumps({"key": m.key, "value": m.value,
                                        "timestamp": m.timestamp, "step": m.step}) + "\n")
            if first:
                print(f"[tracking] the store did not take metrics of run {self.run_id} "
                      f"({type(exc).__name__}: {str(exc)[:200]}); keeping them in {spool} "
                      f"until it answers again (or run `policylong sync`)",
                      file=sys.stderr, flush=True)

    def log_params(self, params: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Param

        items = [Param(_clean(k)[:250], redact(str(v))[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        if self.run_id is not None:
            self.client.log_dict(self.run_id, redact(obj), artifact_file)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        if self.run_id is not None:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.run_id is not None:
            for k, v in tags.items():
                self.client.set_tag(self.run_id, k, redact(str(v)))

    def log_config(self, config: dict) -> None:
        """The resolved config, as flattened params and as ``config.json``."""
        from harness.config import flatten

        self.log_params(flatten(config))
        self.log_dict(config, "config.json")


NULL_TRACKER = Tracker(None, None)


# MLflow 3's UI opens an experiment in its model-training views (runs table, metric charts)
# rather than the GenAI ones when the experiment carries this tag.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


class Tracking:
    """Experiment-level access: create runs, nest them, read them back."""

    def __init__(self, uri: str | None = None, experiment: str = "default",
                 artifact_root: Path | str | None = None):
        from mlflow.tracking import MlflowClient

        self.uri = uri or resolve_uri()
        check_uri(self.uri, uri_origin(self.uri))
        if self.uri.startswith(("http://", "https://")):
            # fail over to the spool within about a minute instead of MLflow's default
            # seven retries with exponential backoff
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        if self.uri.startswith("sqlite:///"):
            from harness.fileio import locked

            db = Path(self.uri[len("sqlite:///"):])
            db.parent.mkdir(parents=True, exist_ok=True)
            # Two processes that open a new store at once would both create its tables, and
            # two that create one experiment both insert it: one at a time.
            with locked(db, f"the MLflow store {db}"):
                self.client = MlflowClient(tracking_uri=self.uri)
                self.client.search_experiments(max_results=1)
                self.experiment_id = self._experiment(experiment, artifact_root)
        else:
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = self._experiment(experiment, artifact_root)

    @classmethod
    def of_run(cls, uri: str, run_id: str) -> "Tracking":
        """The experiment that holds ``run_id``, creating nothing (``UnknownRun`` when the
        store has no such run)."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        check_uri(uri, uri_origin(uri))
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
            raise UnknownRun(f"no run '{run_id}': the tracking store {uri} does not exist (no "
                             f"run was recorded there); a comparison records its runs in its "
                             f"spec's tracking.uri (pass the spec with --spec) or in "
                             f"MLFLOW_TRACKING_URI")
        self = cls.__new__(cls)
        try:
            self.uri, self.client = uri, MlflowClient(tracking_uri=uri)
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                first = str(exc.message).strip().split(". ")[0].splitlines()[0][:300]
                raise UnsupportedTrackingURI(f"the tracking store {uri} cannot be opened: "
                                             f"{first}") from None
            raise UnknownRun(f"no run '{run_id}' in the tracking store {uri} "
                             f"({self._recent_comparisons()}); `policylong dashboard --uri "
                             f"{uri}` lists every run") from None
        self.experiment_id = run.info.experiment_id
        return self

    def _recent_comparisons(self, n: int = 5) -> str:
        """``"recent comparisons: <id> (<spec>), ..."`` from the store."""
        from mlflow.exceptions import MlflowException

        try:
            ids = [e.experiment_id for e in self.client.search_experiments()]
            runs = self.client.search_runs(ids, "attributes.run_name LIKE 'compare-%'",
                                           max_results=n,
                                           order_by=["attributes.start_time DESC"]) if ids else []
        except MlflowException as exc:
            return f"its runs could not be listed: {exc.error_code}"
        shown = [f"{r.info.run_id} ({r.data.tags.get('spec', r.info.run_name)})" for r in runs]
        return f"recent comparisons: {', '.join(shown)}" if shown else "it holds no comparison"

    def _experiment(self, name: str, artifact_root) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":  # deleted in the UI: its name is still taken
                self.client.restore_experiment(exp.experiment_id)
            if EXPERIMENT_KIND[0] not in exp.tags:
                self.client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            root = Path(artifact_root) if artifact_root else \
                Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts"
            location = root.resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location,
                                             tags=dict([EXPERIMENT_KIND]))

    def start_run(self, name: str, parent: Tracker | None = None,
                  tags: dict[str, str] | None = None) -> Tracker:
        all_tags = dict(tags or {})
        if parent is not None and parent.run_id is not None:
            all_tags["mlflow.parentRunId"] = parent.run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return Tracker(self.client, run.info.run_id)

    def end_run(self, tracker: Tracker, status: str = "FINISHED") -> None:
        if tracker.run_id is not None:
            self.client.set_terminated(tracker.run_id, status=status)

    @contextlib.contextmanager
    def run(self, name: str, parent: Tracker | None = None,
            tags: dict[str, str] | None = None,
            finished_on: tuple[type[BaseException], ...] = ()) -> Iterator[Tracker]:
        """A run that ends FINISHED, or FAILED (KILLED on Ctrl-C) with the exception as its
        ``failure_reason`` tag. Exceptions in ``finished_on`` are planned stops (a pruned trial):
        the run ends FINISHED and the exception propagates."""
        t = self.start_run(name, parent, tags)
        try:
            yield t
        except finished_on:
            self.end_run(t)
            raise
        except BaseException as exc:
            t.set_tags({"failure_reason": f"{type(exc).__name__}: {exc}"[:5000]})
            self.end_run(t, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        self.end_run(t)

    def children(self, parent_run_id: str) -> list:
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value)
                for m in self.client.get_metric_history(run_id, _clean(key))]

    def search(self, filter_string: str = "", order_by: list[str] | None = None) -> list:
        """Runs of this experiment matching an MLflow filter (newest first by default)."""
        return self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                       order_by=order_by or ["attributes.start_time DESC"])

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)

    def tracker(self, run_id: str) -> Tracker:
        """A ``Tracker`` for an existing run (e.g. a tuning study's parent)."""
        return Tracker(self.client, run_id)

    def mark_killed(self, run_id: str, reason: str) -> None:
        """End a run another process left RUNNING, with ``failure_reason``."""
        self.client.set_tag(run_id, "failure_reason", reason)
        self.client.set_terminated(run_id, status="KILLED")


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any work, when MLflow cannot open the URI's scheme or an HTTP
    tracking server does not answer."""
    check_uri(uri, uri_origin(uri))
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            if r.status != 200:
                raise ConnectionError(f"{url} answered HTTP {r.status}")
    except (urllib.error.URLError, OSError) as exc:
        raise ConnectionError(
            f"MLflow tracking server {uri} is unreachable ({exc}); start it or unset "
            f"MLFLOW_TRACKING_URI to use the local store {DEFAULT_DB}") from None
