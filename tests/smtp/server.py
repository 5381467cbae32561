#!/usr/bin/env python3
"""A real SMTP server for the tests (aiosmtpd), on 127.0.0.1.

- Every accepted message is appended as one JSON line to --out
  ({"mail_from", "rcpt_tos", "data"}).
- Recipients whose local part starts with "tempfail" get 451, "unknown" get 550.
- --tls-cert/--tls-key offer STARTTLS (and require it with --require-tls);
  --user/--password require AUTH PLAIN/LOGIN.
Prints "READY <port>" once listening; exits on stdin EOF or SIGTERM.
"""
import argparse, asyncio, json, signal, ssl, sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Handler:
    def __init__(self, out):
        self.out = out

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@", 1)[0]
        if local.startswith("tempfail"):
            return "451 4.3.0 Temporary failure, try again later"
        if local.startswith("unknown"):
            return "550 5.1.1 User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
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
    c = Controller(Handler(a.out), hostname="127.0.0.1", port=port, server_hostname="localhost", **kwargs)
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
