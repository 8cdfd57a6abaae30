"""Start cluster mode: join (or start) Ray, deploy the engine replicas, watch them, clean up after.

`--cluster auto` joins the cluster `ray start --head` made on this machine (or `RAY_ADDRESS`), an
address joins that cluster, and `local` starts a private Ray in this process (loopback only), which
is how the tests and `make cluster-local` run. The replicas are a Serve application the gateway
deploys on start and deletes on exit; Serve runs no HTTP proxy (the gateway is the only way in).

Must not import: websockets, aiortc, omni_server.transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import ray
from ray import serve
from ray._private import ray_constants
from ray.serve.handle import DeploymentHandle

from omni_server.cluster.gateway import ClusterEngines
from omni_server.cluster.replica import APP_NAME, engine_app, replica_gpus
from omni_server.config import PACKAGE_ROOT, Settings

logger = logging.getLogger(__name__)


def start_ray(settings: Settings, *, num_cpus: int | None = None) -> None:
    """Connect this process to Ray (once); replicas find this package through PYTHONPATH."""
    if ray.is_initialized():
        return
    env = {"PYTHONPATH": str(PACKAGE_ROOT)}
    # Serve's tuning knobs (RAY_SERVE_*) and the hub's offline switches apply to the replicas too.
    env.update({k: v for k, v in os.environ.items() if k.startswith(("RAY_SERVE_", "HF_HUB_", "TRANSFORMERS_"))})
    runtime_env = {"env_vars": env}
    if settings.cluster == "local":
        # For a one-machine instance Ray still advertises and binds the machine's routable address;
        # this switch (meant for laptops, read when ray.init starts the node) keeps it on 127.0.0.1.
        ray_constants.ENABLE_RAY_CLUSTER = False
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            runtime_env=runtime_env,
            log_to_driver=settings.log_level == "debug",
        )
    else:
        ray.init(address=settings.cluster, runtime_env=runtime_env, log_to_driver=settings.log_level == "debug")


def deploy(settings: Settings) -> DeploymentHandle[Any]:
    """Deploy (or update) the replicas and wait until each has loaded and warmed up its engine."""
    if settings.replicas < 1 or settings.cluster_reply_window < 1:
        raise SystemExit("Invalid settings: replicas and cluster_reply_window must be at least 1.")
    serve.start(proxy_location="Disabled")
    gpus = replica_gpus(settings, ray.cluster_resources().get("GPU", 0.0))
    logger.info(
        "deploying %d engine replicas (%.2g GPU, %.2g CPU each)", settings.replicas, gpus, settings.replica_cpus
    )
    return serve.run(engine_app(settings, gpus=gpus), name=APP_NAME, route_prefix=None)


def undeploy() -> None:
    serve.delete(APP_NAME)


def stop(settings: Settings, *, step_timeout_s: float = 30.0) -> None:
    """Delete the replicas, stop Serve (if this process started Ray) and leave Ray; a step that
    overruns (Serve waits on its controller without a bound) is logged and left behind."""
    steps: list[tuple[str, Callable[[], None]]] = [("delete the replicas", undeploy)]
    if settings.cluster == "local":
        steps.append(("stop Serve", serve.shutdown))
    for what, step in steps:
        worker = threading.Thread(target=_logged(what, step), name=f"cluster-{what}", daemon=True)
        worker.start()
        worker.join(step_timeout_s)
        if worker.is_alive():
            logger.warning("could not %s within %.0f s; going on", what, step_timeout_s)
    ray.shutdown()  # a local Ray ends with this process's Ray: its processes are stopped here


def _logged(what: str, step: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            step()
        except Exception:  # the teardown goes on; the next steps still run
            logger.exception("could not %s", what)

    return run


@contextlib.asynccontextmanager
async def cluster_engines(settings: Settings) -> AsyncIterator[ClusterEngines]:
    """The gateway's whole cluster life: Ray, the replicas, the watch; all undone on exit."""
    await asyncio.to_thread(start_ray, settings)
    try:
        handle = await asyncio.to_thread(deploy, settings)
        async with ClusterEngines(handle, settings).watching() as engines:
            yield engines
    finally:
        await asyncio.to_thread(stop, settings)
