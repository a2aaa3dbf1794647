import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("onnxruntime")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, *, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as response:
        return json.loads(response.read())


def test_agent_command_serves_info_until_terminated():
    port = _free_port()
    env = {**os.environ, "AUTOCOMPRESS_AGENT_TOKEN": "cli-token", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "autocompress.cli", "agent", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, info = time.monotonic() + 60, None
        while info is None and time.monotonic() < deadline and process.poll() is None:
            try:
                info = _get_json(f"{url}/info", token="cli-token")
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        assert info is not None, "the agent never answered /info"
        assert info["agent"] == "autocompress" and info["onnxruntime"]["version"]
        with pytest.raises(urllib.error.HTTPError) as err:  # the token came from the env
            _get_json(f"{url}/info", token="wrong")
        assert err.value.code == 401
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert f"listening on {url}" in output and "token required" in output
