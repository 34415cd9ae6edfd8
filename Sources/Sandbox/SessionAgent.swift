/// The Python side of a session: run as `python3 -s -c SOURCE` inside the session's
/// sandbox. It moves its control channel (the socket it was given as stdin) to a
/// descriptor of its own, gives the code /dev/null as stdin, announces itself, then
/// runs cells until the channel closes.
///
/// One frame each way per cell: 4 bytes of big-endian length, then UTF-8 JSON.
/// In: `{"code", "stdin"}`. Out: `{"exit_code", "exception", "results"}`. Output goes
/// to the sandbox's own stdout and stderr pipes (flushed before the reply), so what
/// subprocesses print is captured too.
///
/// A cell runs in one `__main__` namespace kept across cells, like a notebook: a final
/// expression's value comes back as `text/plain` (and `image/png` / `text/html` when
/// the object has `_repr_png_` / `_repr_html_`), every open matplotlib figure comes back
/// as `image/png` (and is closed), an exception as `{name, value, traceback}` with its
/// traceback printed to stderr as python3 would. SIGINT (the supervisor's time limit)
/// raises KeyboardInterrupt in the cell; between cells it is ignored, so one that
/// arrives as a cell ends is lost rather than raised in the next.
enum SessionAgent {
    /// What both agents share: running code as a cell, rich results, figures.
    static let common = #"""
import ast, base64, builtins, io, json, os, signal, struct, sys, traceback, types

LIMIT = 8 << 20  # bytes of rich results per execution


def bundle(v, out, room):
    if not isinstance(v, type):
        for meth, mime in (('_repr_png_', 'image/png'), ('_repr_html_', 'text/html')):
            f = getattr(v, meth, None)
            if not callable(f):
                continue
            try:
                d = f()
            except Exception:
                continue
            if isinstance(d, (bytes, bytearray)):
                d = base64.b64encode(bytes(d)).decode()
            if isinstance(d, str) and d and len(d) <= room[0]:
                room[0] -= len(d)
                out.append({'type': mime, 'data': d})
    try:
        text = repr(v)
    except Exception as e:
        text = '<repr failed: %s>' % type(e).__name__
    text = text[:max(0, room[0])]
    room[0] -= len(text)
    out.append({'type': 'text/plain', 'data': text})

def figures(out, room):
    plt = sys.modules.get('matplotlib.pyplot')
    if plt is None:
        return
    try:
        for num in plt.get_fignums():
            buf = io.BytesIO()
            plt.figure(num).savefig(buf, format='png')
            d = base64.b64encode(buf.getvalue()).decode()
            if len(d) <= room[0]:
                room[0] -= len(d)
                out.append({'type': 'image/png', 'data': d})
        plt.close('all')
    except Exception as e:
        print('sandpit: a figure could not be rendered: %r' % (e,), file=sys.stderr)



def run_code(source, name, ns, results, room, agent_frame):
    """Runs `source` in `ns` like a notebook cell: returns (exit code, exception)."""
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        tree = ast.parse(source, name, 'exec')
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, name, 'exec'), ns)
        if last is not None:
            value = eval(compile(last, name, 'eval'), ns)
            if value is not None:
                ns['_'] = value
                bundle(value, results, room)
        return 0, None
    except SystemExit as e:
        c = e.code
        if c is None:
            return 0, None
        if isinstance(c, int):
            return c & 0xff, None
        print(c, file=sys.stderr)
        return 1, None
    except BaseException as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_name in (agent_frame, 'run_code'):
            tb = tb.tb_next  # the agent's own frames
        text = ''.join(traceback.format_exception(type(e), e, tb))
        try:
            sys.stderr.write(text)
        except Exception:
            pass
        return 1, {'name': type(e).__name__, 'value': str(e), 'traceback': text}
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def flush():
    for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            s.flush()
        except Exception:
            pass
"""#

    static let source = common + #"""


def _sandpit_session():
    ctl = os.dup(0)
    os.set_inheritable(ctl, False)
    nul = os.open('/dev/null', os.O_RDONLY)
    os.dup2(nul, 0)
    os.close(nul)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    main = types.ModuleType('__main__')
    main.__builtins__ = builtins
    sys.modules['__main__'] = main
    ns = main.__dict__
    sys.argv = ['']
    sys.path[0] = '/work'

    def read_exact(n):
        buf = b''
        while len(buf) < n:
            chunk = os.read(ctl, n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def send(obj):
        data = json.dumps(obj).encode()
        os.write(ctl, struct.pack('>I', len(data)))
        view = memoryview(data)
        while view:
            view = view[os.write(ctl, view):]

    send({'ready': True, 'python': sys.version.split()[0]})
    cell = 0
    while True:
        head = read_exact(4)
        if head is None:
            return
        body = read_exact(struct.unpack('>I', head)[0])
        if body is None:
            return
        req = json.loads(body)
        cell += 1
        name = '<cell %d>' % cell
        sys.stdin = io.StringIO(req.get('stdin') or '')
        results = []
        room = [LIMIT]
        code, exc = run_code(req['code'], name, ns, results, room, '_sandpit_session')
        figures(results, room)
        flush()
        sys.stdin = io.StringIO('')
        send({'exit_code': code, 'exception': exc, 'results': results})


_sandpit_session()
"""#

    /// Where a stateless run with `rich_results` leaves its results (under /work).
    static let resultsFile = ".sandpit-results.json"

    /// A stateless run with `rich_results`: `python3 -s -c ONESHOT /work/main.py ARGS`
    /// runs the file as a notebook cell (a final expression's value, open figures, an
    /// exception as {name, value, traceback}), writes them to /work/.sandpit-results.json,
    /// and exits with the program's exit code.
    static let oneShot = common + #"""


def _sandpit_oneshot():
    path = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(path)
    main = types.ModuleType('__main__')
    main.__builtins__ = builtins
    main.__file__ = path
    sys.modules['__main__'] = main
    results = []
    room = [LIMIT]
    with open(path, 'rb') as f:
        source = f.read()
    code, exc = run_code(source, path, main.__dict__, results, room, '_sandpit_oneshot')
    figures(results, room)
    try:
        with open('/work/.sandpit-results.json', 'w') as f:
            json.dump({'results': results, 'exception': exc}, f)
    except OSError as e:
        print('sandpit: the results could not be written: %s' % e, file=sys.stderr)
    flush()
    return code


sys.exit(_sandpit_oneshot())
"""#
}
