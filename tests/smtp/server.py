#!/usr/bin/env python3
"""A real SMTP server for the tests (aiosmtpd), on 127.0.0.1.

- Every accepted message is appended as one JSON line to --out
  ({"mail_from", "rcpt_tos", "data"}).
- Recipients whose local part starts with "greylist" get
  451 4.7.1 (greylisting), "tempfail" get 451 4.3.0, "unknown" get 550,
  "echo-rcpt" get 550 quoting the address in lower case; a message to
  "echo-body" is refused at DATA with 554 quoting its first body lines as
  they came over the wire (servers that echo what they refuse).
- --rcpt-log appends one line per RCPT: "<address> <reply code>".
- --conn-log appends one line per TCP connection accepted ("connect"),
  including the controller's own start-up probe.
- --tls-cert/--tls-key offer STARTTLS (and require it with --require-tls);
  --user/--password require AUTH PLAIN/LOGIN.
Prints "READY <port>" once listening; exits on stdin EOF or SIGTERM.
"""
import argparse, asyncio, json, signal, ssl, sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Handler:
    def __init__(self, out, rcpt_log=None):
        self.out = out
        self.rcpt_log = rcpt_log

    def reply_for(self, address):
        local = address.split("@", 1)[0]
        if local.startswith("greylist"):
            return "451 4.7.1 Greylisting in action, please come back later"
        if local.startswith("tempfail"):
            return "451 4.3.0 Temporary failure, try again later"
        if local.startswith("unknown"):
            return "550 5.1.1 User unknown"
        if local.lower().startswith("echo-rcpt"):
            return "550 5.1.1 <%s>: Recipient address rejected" % address.lower()
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.reply_for(address)
        if self.rcpt_log:
            with open(self.rcpt_log, "a") as f:
                f.write("%s %s\n" % (address, reply.split(" ", 1)[0]))
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):
        if any(r.lower().startswith("echo-body") for r in envelope.rcpt_tos):
            body = envelope.original_content.split(b"\r\n\r\n", 1)[-1]
            lines = [l for l in body.decode("ascii", "replace").split("\r\n") if l][:2]
            return "554 5.6.0 Message refused: %s" % " ".join(lines)
        with open(self.out, "a") as f:
            f.write(json.dumps({
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "data": envelope.content.decode("utf8", errors="replace"),
                "tls": session.ssl is not None,
                "auth": session.authenticated,
            }) + "\n")
        return "250 2.0.0 Ok: queued as Q%08d" % (abs(hash(envelope.content)) % 10**8)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--require-tls", action="store_true")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--rcpt-log")
    p.add_argument("--conn-log")
    a = p.parse_args()

    kwargs = {}
    if a.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
        kwargs["tls_context"] = ctx
        kwargs["require_starttls"] = a.require_tls
    if a.user:
        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = isinstance(auth_data, LoginPassword) and \
                auth_data.login.decode() == a.user and auth_data.password.decode() == a.password
            return AuthResult(success=ok, handled=False)
        kwargs["authenticator"] = authenticator
        kwargs["auth_required"] = True
        # AUTH only over TLS unless no TLS is offered at all.
        kwargs["auth_require_tls"] = bool(a.tls_cert)

    # Bind to a free port first so the port can be reported.
    import socket
    port = a.port
    if port == 0:
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    class CountingSMTP(SMTP):
        def connection_made(self, transport):
            if a.conn_log:
                with open(a.conn_log, "a") as f:
                    f.write("connect\n")
            super().connection_made(transport)

    class CountingController(Controller):
        def factory(self):
            return CountingSMTP(self.handler, **self.SMTP_kwargs)

    c = CountingController(Handler(a.out, a.rcpt_log), hostname="127.0.0.1", port=port,
                           server_hostname="localhost", **kwargs)
    c.start()
    print("READY %d" % port, flush=True)

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    def on_term(*_):
        loop.call_soon_threadsafe(stop.set)
    signal.signal(signal.SIGTERM, on_term)
    async def wait_stdin():
        await loop.run_in_executor(None, sys.stdin.read)
        stop.set()
    loop.create_task(wait_stdin())
    loop.run_until_complete(stop.wait())
    c.stop()


if __name__ == "__main__":
    main()
