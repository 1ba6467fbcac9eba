"""Graphite 1.1 tagged series, found by tag through a real graphite-web's render API."""

import json
import urllib.parse

import pytest

from conftest import free_port, wait_for
from gsender_bcc.metrics import short_hostname
from local_carbon import CarbonCache, GraphiteWeb

pytestmark = pytest.mark.bpf


@pytest.fixture
def tagged_graphite(tmp_path):
    """carbon-cache with ENABLE_TAGS, registering series in graphite-web's tag database."""
    web_port = free_port()
    carbon = CarbonCache(tmp_path / "carbon", extra_config=(
        f"ENABLE_TAGS = True\nGRAPHITE_URL = http://127.0.0.1:{web_port}\n"
        f"TAG_UPDATE_INTERVAL = 1\nTAG_BATCH_SIZE = 100\n"))
    web = GraphiteWeb(tmp_path / "web", carbon, port=web_port)
    web.start()
    try:
        carbon.start()
        yield carbon, web
    finally:
        carbon.stop()
        web.stop()


def by_tag(web, *expressions):
    """Return {series name: {stamp: value}} for seriesByTag(expressions), from format=json."""
    target = "seriesByTag(" + ",".join(f"'{e}'" for e in expressions) + ")"
    status, _, body = web.get("/render?" + urllib.parse.urlencode(
        {"target": target, "format": "json", "from": "-10min"}))
    assert status == 200, body[:500]
    return {series["target"]: {stamp: value for value, stamp in series["datapoints"]
                               if value is not None}
            for series in json.loads(body)}


def test_tagged_series_are_found_by_host_and_by_service(tagged_graphite, agent_factory,
                                                        cgroup_factory, tmp_path):
    carbon, web = tagged_graphite
    busy = cgroup_factory("tagtest.service")
    busy.spin(0)
    busy.spin(0)
    agent = agent_factory(["--tags", "--echo", "--frequency", "1", "--config", "/dev/null",
                           "--graphite-host", "127.0.0.1", "--graphite-port", str(carbon.port),
                           "--state-directory", str(tmp_path / "state")])
    sent = agent.intervals(4)
    host = short_hostname()
    p99 = {stamp: value for path, value, stamp in sent if path == f"cpu-lat.p99;host={host}"}
    service_p99 = {stamp: value for path, value, stamp in sent
                   if path == f"cpu-lat.service.p99;host={host};service=tagtest"}
    assert len(p99) == 4 and len(service_p99) >= 3

    def arrived(expressions, expected):
        found = by_tag(web, *expressions)
        return len(found) == 1 and expected.items() <= next(iter(found.values())).items()
    wait_for(lambda: arrived(("name=cpu-lat.p99", f"host={host}"), p99), 60,
             "seriesByTag for the host's p99 to return the agent's values")
    wait_for(lambda: arrived(("name=cpu-lat.service.p99", "service=tagtest"), service_p99), 60,
             "seriesByTag for the service's p99 to return the agent's values")
    assert agent.stop()[0] == 0
