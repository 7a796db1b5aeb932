"""The Ray dashboard's Serve view shows raygate's deployments, running and healthy."""

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_dashboard_lists_the_deployments(ray_context, model_name):
    # Ray 2.60 protects the dashboard API with a cluster token; its own clients send it like this.
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    from deployments.app import llm_deployment_name

    url = "http://" + ray_context.dashboard_url
    r = httpx.get(url + "/api/serve/applications/", headers=get_auth_headers_if_auth_enabled({}), timeout=30)
    assert r.status_code == 200, r.text
    apps = r.json()["applications"]
    app = apps["raygate"]
    assert app["status"] == "RUNNING"
    deployments = app["deployments"]
    assert {"Ingress", llm_deployment_name(model_name)} <= set(deployments)
    for name in ("Ingress", llm_deployment_name(model_name)):
        assert deployments[name]["status"] == "HEALTHY"
        assert any(r["state"] == "RUNNING" for r in deployments[name]["replicas"])
