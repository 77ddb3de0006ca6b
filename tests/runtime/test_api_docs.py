"""/docs and /redoc work on an air-gapped site: every asset they load is served by the process itself."""

from __future__ import annotations

import re

import httpx
import pytest

from edgefleet.runtime import ApiConfig, ApiServer, Runtime


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_nothing_from_outside(digits_bundle, page):
    rt = Runtime.from_bundle(digits_bundle)
    with ApiServer(rt, ApiConfig(port=0)) as srv, httpx.Client(base_url=srv.url, timeout=10) as c:
        html = c.get(page)
        assert html.status_code == 200
        refs = re.findall(r"""(?:src|href)=["']([^"']+)["']|url:\\s*['"]([^'"]+)['"]""", html.text)
        urls = [a or b for a, b in refs]
        assert urls, html.text
        assert not [u for u in urls if re.match(r"(https?:)?//", u)], urls  # no CDN, no fonts service
        for u in urls:
            r = c.get(u)
            assert r.status_code == 200 and len(r.content) > 0, u
        assert any(u.endswith(".js") for u in urls)
    rt.close()
