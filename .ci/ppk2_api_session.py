#!/usr/bin/env python3
"""Drives the simulated board's PPK2 (`hil sim serve --root DIR`, port DIR/ppk2) with a real
third-party client, IRNAS `ppk2-api` (pinned in .ci/requirements-ppk2.txt), and prints one JSON
object with what the client saw. It asserts nothing about the numbers: the Rust test
harness/tests/sim_ppk2_api.rs compares them with the simulator's power model and checks that the
simulator still shuts down promptly afterwards.

Usage: ppk2_api_session.py PORT VARIANT

Variants (the first is issue 16's sequence):
  issue            get_modifiers, use_source_meter, set_source_voltage(5000), toggle_DUT_power("ON"),
                   start_measuring, 3 s of get_data/get_samples, stop_measuring
  toggle           at 3300 mV: DUT on 1 s, off 1 s, on 1 s while streaming; stop; drain. Reports the
                   runs of samples (on/off) in order, with their means
  garbage          bytes that are no command and a dangling REGULATOR_SET before the session, more
                   junk mid-stream; then the issue's sequence for 1 s
  reset            a session at 3300 mV, RESET (0x20) mid-stream: the stream must stop and the
                   metadata must show the power-up state; then a new 5000 mV session for 1 s
  leave-streaming  starts streaming, reads 0.5 s, exits without stop or close
  close-mid-stream starts streaming, reads 0.5 s, closes the port while streaming, exits
  slow-reader      reads 1.5 s at half the stream's rate (the device falls behind with a large write
                   pending: what wedged the emulator of issue 16), stops without reading on, exits
  stall            starts streaming, reads nothing for 1.5 s (the pty fills), stops, exits
"""

import json
import os
import sys
import time
from importlib.metadata import version

from ppk2_api.ppk2_api import PPK2_API

RESET = 0x20
GET_META_DATA = 0x19


def read_for(ppk, seconds, samples=None):
    """get_data/get_samples for `seconds`; returns the samples (uA) in order."""
    out = [] if samples is None else samples
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        data = ppk.get_data()
        if data:
            s, _ = ppk.get_samples(data)
            out.extend(s)
        else:
            time.sleep(0.005)
    return out


def drain(ppk, quiet=0.3, limit=10.0, samples=None):
    """Reads until nothing arrived for `quiet` s (bounded by `limit`); returns samples and bytes."""
    out = [] if samples is None else samples
    nbytes = 0
    last = time.monotonic()
    end = last + limit
    while time.monotonic() < end and time.monotonic() - last < quiet:
        data = ppk.get_data()
        if data:
            nbytes += len(data)
            s, _ = ppk.get_samples(data)
            out.extend(s)
            last = time.monotonic()
        else:
            time.sleep(0.005)
    return out, nbytes


def metadata_text(ppk):
    """GET_META_DATA and the raw text, with the client's own reader."""
    ppk.ser.reset_input_buffer()
    ppk._write_serial((GET_META_DATA,))
    return ppk._read_metadata() or ""


def meta_fields(text):
    fields = {}
    for line in text.splitlines():
        if ": " in line:
            k, v = line.split(": ", 1)
            fields[k.strip()] = v.strip()
    return fields


def stats(samples_ua):
    n = len(samples_ua)
    mean_ma = sum(samples_ua) / n / 1000.0 if n else None
    return {"samples": n, "mean_ma": mean_ma}


def runs(samples_ua, threshold_ua):
    """Collapses samples into runs above/below `threshold_ua`, in order."""
    out = []
    for v in samples_ua:
        state = "on" if v > threshold_ua else "off"
        if out and out[-1]["state"] == state:
            r = out[-1]
            r["samples"] += 1
            r["sum_ua"] += v
        else:
            out.append({"state": state, "samples": 1, "sum_ua": v})
    for r in out:
        r["mean_ma"] = r.pop("sum_ua") / r["samples"] / 1000.0
    return out


def bring_up(port, mv):
    ppk = PPK2_API(port)
    ok = ppk.get_modifiers()
    ppk.use_source_meter()
    ppk.set_source_voltage(mv)
    return ppk, ok


def main():
    port, variant = sys.argv[1], sys.argv[2]
    result = {"variant": variant, "ppk2_api": version("ppk2-api"), "pyserial": version("pyserial")}

    if variant == "issue":
        ppk, ok = bring_up(port, 5000)
        result["modifiers_ok"] = bool(ok)
        result["R3"] = ppk.modifiers["R"]["3"]
        result["HW"] = ppk.modifiers["HW"]
        ppk.toggle_DUT_power("ON")
        ppk.start_measuring()
        result.update(stats(read_for(ppk, 3.0)))
        ppk.stop_measuring()

    elif variant == "toggle":
        ppk, ok = bring_up(port, 3300)
        result["modifiers_ok"] = bool(ok)
        ppk.toggle_DUT_power("ON")
        ppk.start_measuring()
        samples = read_for(ppk, 1.0)
        ppk.toggle_DUT_power("OFF")
        read_for(ppk, 1.0, samples)
        ppk.toggle_DUT_power("ON")
        read_for(ppk, 1.0, samples)
        ppk.stop_measuring()
        drain(ppk, samples=samples)
        result.update(stats(samples))
        # Half of the expected on-current: far from both levels.
        result["runs"] = runs(samples, threshold_ua=300_000.0)

    elif variant == "garbage":
        ppk = PPK2_API(port)
        ppk.ser.write(bytes([0x00, 0x42, 0xFF, 0x99, 0xEE, 0x0D]))  # the last one never gets its arguments
        time.sleep(0.3)
        result["modifiers_ok"] = bool(ppk.get_modifiers())
        result["meta_after_garbage"] = meta_fields(metadata_text(ppk))
        ppk.use_source_meter()
        ppk.set_source_voltage(5000)
        ppk.toggle_DUT_power("ON")
        ppk.start_measuring()
        samples = read_for(ppk, 0.5)
        ppk.ser.write(bytes([0x42, 0xEE, 0x99]))
        read_for(ppk, 0.5, samples)
        ppk.stop_measuring()
        result.update(stats(samples))

    elif variant == "reset":
        ppk, ok = bring_up(port, 3300)
        result["modifiers_ok"] = bool(ok)
        ppk.toggle_DUT_power("ON")
        ppk.start_measuring()
        before = read_for(ppk, 0.5)
        result["before_reset"] = stats(before)
        ppk._write_serial((RESET,))
        time.sleep(0.2)
        drain(ppk)
        _, late = drain(ppk, quiet=0.3)
        result["bytes_after_reset"] = late
        result["meta_after_reset"] = meta_fields(metadata_text(ppk))
        ppk.remainder = {"sequence": b"", "len": 0}
        ppk.use_source_meter()
        ppk.set_source_voltage(5000)
        ppk.toggle_DUT_power("ON")
        ppk.start_measuring()
        result.update(stats(read_for(ppk, 1.0)))
        ppk.stop_measuring()

    elif variant == "leave-streaming":
        ppk, _ = bring_up(port, 5000)
        ppk.toggle_DUT_power("ON")
        ppk.start_measuring()
        result.update(stats(read_for(ppk, 0.5)))
        print(json.dumps(result), flush=True)
        os._exit(0)  # no stop, no close: the OS closes the descriptor

    elif variant == "close-mid-stream":
        ppk, _ = bring_up(port, 5000)
        ppk.toggle_DUT_power("ON")
        ppk.start_measuring()
        result.update(stats(read_for(ppk, 0.5)))
        ppk.ser.close()

    elif variant == "slow-reader":
        ppk, _ = bring_up(port, 5000)
        ppk.toggle_DUT_power("ON")
        ppk.start_measuring()
        samples = []
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            # Half the stream's 400 kB/s: the device side falls behind with a large write pending.
            data = ppk.ser.read(min(ppk.ser.in_waiting, 2048))
            if data:
                samples.extend(ppk.get_samples(data)[0])
            time.sleep(0.01)
        ppk.stop_measuring()
        result.update(stats(samples))

    elif variant == "stall":
        ppk, _ = bring_up(port, 5000)
        ppk.toggle_DUT_power("ON")
        ppk.start_measuring()
        time.sleep(1.5)
        ppk.stop_measuring()
        result["samples"] = 0

    else:
        sys.exit(f"unknown variant {variant!r}")

    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
