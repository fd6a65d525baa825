"""The operator's connection to the API: logged in the way kopf logs in (in-cluster, else
KUBECONFIG). The calls themselves are `splatops.kubeapi.Kube`, shared with the clients."""

from __future__ import annotations

import os

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.config.config_exception import ConfigException

from splatops.kubeapi import Kube


async def connect() -> Kube:
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except ConfigException:  # not in a pod: KUBECONFIG or ~/.kube/config, as kopf does
        # Read KUBECONFIG now: kubernetes_asyncio captures its default path at import time.
        await config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=cfg)
    api = client.ApiClient(configuration=cfg)
    _without_env_lookups(api)
    return Kube(api)


def _without_env_lookups(api: client.ApiClient) -> None:
    """Use the client's connection pool in a session that does not consult the environment.

    kubernetes_asyncio opens its aiohttp session with trust_env=True: aiohttp then reads ~/.netrc
    and the *_PROXY variables in a worker thread on every request (two thread round trips per
    call; measurable at hundreds of calls per second). kopf's own session does neither (its
    `settings.networking.trust_env` is off by default), and a proxy from the kubeconfig is still
    passed per request by kubernetes_asyncio (`configuration.proxy`).
    """
    rest = api.rest_client
    old = rest.pool_manager
    rest.pool_manager = aiohttp.ClientSession(
        connector=old.connector, trust_env=False, read_bufsize=2**21,  # as kubernetes_asyncio sets it
    )
    old.detach()  # the new session owns the connector now; the old one must not close it
