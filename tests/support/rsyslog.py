"""A private rsyslogd (Debian's ``rsyslog`` and ``rsyslog-openssl``, installed by
.ci/system-deps) receiving RFC 5425 syslog over TLS on loopback and writing each message's
raw text, one per line, to a file. Its main queue is Direct: a message is written before
rsyslog reads the next bytes, so what it has acknowledged (read up to our close_notify) is
in the file, even if it is killed right after (README, Audit to the SIEM)."""

from __future__ import annotations

import glob
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.process import free_port

RSYSLOGD = "/usr/sbin/rsyslogd"
OSSL_DRIVER = "/usr/lib/*/rsyslog/lmnsd_ossl.so"  # the package rsyslog-openssl

CONFIG = """\
global(
  workDirectory="{dir}"
  defaultNetstreamDriver="ossl"
  defaultNetstreamDriverCAFile="{ca}"
  defaultNetstreamDriverCertFile="{cert}"
  defaultNetstreamDriverKeyFile="{key}"
  maxMessageSize="64k"
)
main_queue(queue.type="Direct")
module(load="imtcp" streamDriver.name="ossl" streamDriver.mode="1"
       streamDriver.authMode="x509/certvalid")
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="deepseekd")
template(name="raw" type="string" string="%rawmsg%\\n")
template(name="json" type="string" string="%msg%\\n")
ruleset(name="deepseekd") {{
  action(type="omfile" file="{out}" template="raw")
  action(type="omfile" file="{dir}/records.jsonl" template="json")
}}
"""


def available() -> bool:
    return Path(RSYSLOGD).is_file() and bool(glob.glob(OSSL_DRIVER))


@dataclass
class Rsyslog:
    dir: Path
    port: int
    ca: Path
    cert: Path
    key: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def out(self) -> Path:
        return self.dir / "received.log"

    def start(self) -> None:
        """Start (again: the same port and file) and wait until it listens."""
        conf = self.dir / "rsyslog.conf"
        conf.write_text(CONFIG.format(dir=self.dir, ca=self.ca, cert=self.cert, key=self.key,
                                      port=self.port, out=self.out))
        with open(self.dir / "rsyslogd.log", "ab") as log:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.dir / "rsyslogd.pid")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self._listening():
            assert self.proc.poll() is None, (self.dir / "rsyslogd.log").read_text()
            assert time.monotonic() < deadline, "rsyslogd did not start listening"
            time.sleep(0.05)

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        """SIGKILL: what it has not written is lost, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def lines(self) -> list[bytes]:
        if not self.out.exists():
            return []
        return [x for x in self.out.read_bytes().split(b"\n") if x]


def make_rsyslog(folder: Path, ca: Path, cert: Path, key: Path) -> Rsyslog:
    folder.mkdir(parents=True, exist_ok=True)
    return Rsyslog(folder, free_port(), ca, cert, key)
