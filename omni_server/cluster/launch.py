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
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from omni_server.cluster.gateway import ClusterEngines
from omni_server.cluster.replica import APP_NAME, engine_app, replica_gpus
from omni_server.config import PACKAGE_ROOT, Settings

logger = logging.getLogger(__name__)


def start_ray(settings: Settings, *, num_cpus: int | None = None) -> None:
    """Connect this process to Ray (once); replicas find this package through PYTHONPATH."""
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": {"PYTHONPATH": str(PACKAGE_ROOT), "HF_HUB_OFFLINE": "1"}}
    if settings.cluster == "local":
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


@contextlib.asynccontextmanager
async def cluster_engines(settings: Settings) -> AsyncIterator[ClusterEngines]:
    """The gateway's whole cluster life: Ray, the replicas, the watch; all undone on exit."""
    await asyncio.to_thread(start_ray, settings)
    try:
        handle = await asyncio.to_thread(deploy, settings)
        try:
            async with ClusterEngines(handle, settings).watching() as engines:
                yield engines
        finally:
            await asyncio.to_thread(undeploy)
    finally:
        if settings.cluster == "local":
            await asyncio.to_thread(serve.shutdown)
        await asyncio.to_thread(ray.shutdown)
