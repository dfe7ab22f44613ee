"""A fake port obeying the contract's command line, with one misbehaviour chosen by its name.

behaviours: good, crash, hang, no-stats, lies-threads (claims -j but burns 1 core),
greedy-threads (burns 2 cores at -j 1), short (generates fewer tokens), slow-clock (claims more
time than it lived), interrupt (sends SIGINT to the harness on its first run at -j 2, once per
FAKE_INTERRUPT_FLAG file). FAKE_ORDER_LOG, when set, names a file each run appends its behaviour to.
"""
import json
import os
import signal
import sys
import threading
import time

behaviour = sys.argv[1]
args = dict(zip(sys.argv[3::2], sys.argv[4::2]))
steps, threads = int(args.get("-n", "256")), int(args.get("-j", "1"))

if behaviour == "crash":
    sys.stderr.write("Segmentation fault\n")
    os.abort()
if behaviour == "hang":
    time.sleep(3600)


def burn(seconds):
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        x += 1


t0 = time.perf_counter()
if os.environ.get("FAKE_ORDER_LOG"):
    with open(os.environ["FAKE_ORDER_LOG"], "a") as log:
        log.write(behaviour + "\n")
flag = os.environ.get("FAKE_INTERRUPT_FLAG")
if behaviour == "interrupt" and threads == 2 and flag and not os.path.exists(flag):
    open(flag, "w").close()
    os.kill(os.getppid(), signal.SIGINT)
work = float(os.environ.get("FAKE_WORK_S", "0.05"))
workers = 2 if behaviour == "greedy-threads" else (1 if behaviour == "lies-threads" else threads)
pool = [threading.Thread(target=burn, args=(work,)) for _ in range(workers - 1)]
for t in pool:
    t.start()
burn(work)
for t in pool:
    t.join()
decode = time.perf_counter() - t0
generated = steps - 5 if behaviour == "short" else steps
if behaviour == "slow-clock":
    decode += 100
print("once upon a time")
if behaviour != "no-stats" and args.get("-i"):  # a pp cell: the harness's prompt is `steps` tokens long
    stats = {"port": "fake", "prompt_tokens": steps, "generated_tokens": 1, "positions": steps,
             "threads": threads, "batch": int(args.get("-b", "512")), "load_s": 0.001, "ttft_s": decode + 0.0001,
             "prefill_s": decode, "prefill_tok_s": steps / decode, "decode_s": 0.0, "decode_tok_s": 0.0}
    print("polyllama-stats: " + json.dumps(stats), file=sys.stderr)
elif behaviour != "no-stats":
    stats = {"port": "fake", "prompt_tokens": 1, "generated_tokens": generated, "positions": generated,
             "threads": threads, "load_s": 0.001, "ttft_s": 0.001, "decode_s": decode,
             "decode_tok_s": (generated - 1) / decode}
    print("polyllama-stats: " + json.dumps(stats), file=sys.stderr)
