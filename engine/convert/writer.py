"""The one YAML writer of both converters: our net text, with a comment header, each
layer's output shape beside its name, and the `train:` section."""
import json
import textwrap

import yaml


def schedule_text(schedule):
    if isinstance(schedule, str):
        return schedule
    return " ".join(f"{k} {number(v) if isinstance(v, float) else v}" for k, v in schedule.items())


def number(v):
    """A float as YAML reads it back (PyYAML wants a dot in 1.0e-05); integral values as ints."""
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    s = f"{v:.10g}"
    mantissa, e, exponent = s.partition("e")
    if e and "." not in mantissa:
        s = f"{mantissa}.0e{exponent}"
    return s


def value(v, flow=False):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return number(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x, flow=True) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {value(x, flow=True)}" for k, x in v.items()) + "}"
    probe = f"[{v}]" if flow else f"k: {v}"
    try:
        plain = yaml.safe_load(probe) == ([v] if flow else {"k": v})
    except yaml.YAMLError:
        plain = False
    return v if plain else json.dumps(v)


def emit(name, input_shape, converted, train, header):
    several_columns = any(c.gpu for c in converted)
    lines = [f"# {w}" for h in header for w in textwrap.wrap(h, 96, subsequent_indent="    ",
                                                              break_on_hyphens=False)]
    lines += [f"name: {value(name)}", f"input: {{shape: {value(list(input_shape))}}}", "", "layers:"]
    for c in converted:
        keys = [("name", c.name), ("type", c.type), ("inputs", c.inputs)]
        if several_columns:
            keys.append(("gpu", c.gpu))
        keys += list(c.cfg.items())
        if c.solver:
            keys += [(k, c.solver[k]) for k in ("lr_w", "lr_b", "wd") if c.solver[k] != 1.0]
            if c.solver.get("mom_w") is not None:         # a momentum of its own (cuda-convnet's momW)
                keys.append(("mom_w", c.solver["mom_w"]))
        for i, (k, v) in enumerate(keys):
            line = f"{'  - ' if i == 0 else '    '}{k}: {value(v)}"
            if i == 0 and c.shape is not None:
                line = f"{line:<31} # -> {list(c.shape)}"     # YAML wants a space before '#'
            lines.append(line)
        lines.append("")
    if train:
        lines.append("train:")
        lines += [f"  {k}: {value(v)}" for k, v in train.items()]
    return "\n".join(lines).rstrip("\n") + "\n"
