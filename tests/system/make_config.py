"""Inside the namespaced system: turn `fvagent demo --write-config`'s file into the service's
config (state in /var/lib/fvagent, secrets out of the file into /etc/credstore for LoadCredential=)
and keep the whole file for the mock platform, which checks the same secrets.

    python make_config.py DEMO_TOML SERVICE_TOML MOCK_TOML API_TOKEN
"""

import os
import shutil
import sys
import tomllib
from pathlib import Path

from agent.service.samples import toml_text

demo, service, mock, token = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
doc = tomllib.loads(demo.read_text(encoding="utf-8"))
shutil.copy2(demo, mock)
secrets = {
    "org_app_secret": doc["platform"].pop("org_app_secret"),
    "ticket": doc["platform"]["auth"].pop("ticket"),
    "token": token,
}
doc["storage"]["dir"] = "/var/lib/fvagent"
doc["local_api"]["token"] = None
doc["local_api"].pop("token")
doc["logging"] = {"level": "INFO", "journald": "off"}
Path("/etc/credstore").mkdir(mode=0o700, exist_ok=True)
for name, value in secrets.items():
    path = Path("/etc/credstore") / f"fvagent.{name}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, (value + "\n").encode())
    os.close(fd)
service.write_text(toml_text(doc), encoding="utf-8")
os.chmod(service, 0o640)
shutil.chown(service, "root", "fvagent")
