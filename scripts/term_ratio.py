"""How large the DKKT term's image gradient is against its host loss's at weight 1.

For dc_dkkt, dsa_dkkt and dm_dkkt (host: gradient matching with and without DSA, DM), the first
image update of a run on Fashion-MNIST (pipc 10, the packaged edge model, fp32, real images as
the initial set): ‖∇x L_DKKT‖ / ‖∇x L_host‖, read from the balancing rule's own measurement.

    python scripts/term_ratio.py [--ipc 1 10] [--seeds 0 1]
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

HOSTS = {"dc_dkkt": {"outer_loop": 1}, "dsa_dkkt": {"outer_loop": 1},
         "dm_dkkt": {"dkkt.balance": "grad", "beta": 1.0}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args(argv)
    from dkkt_plugin import runtime
    from dkkt_plugin.engine import build_config, load_distill_data, method_class

    print("| method | ipc | ‖∇L_DKKT‖ / ‖∇L_host‖ at weight 1, per seed |")
    print("|---|---|---|")
    with runtime.use(precision="fp32"):
        for name, extra in HOSTS.items():
            for ipc in args.ipc:
                ratios = []
                for seed in args.seeds:
                    cfg = build_config(name, {**extra, "init": "real"}, ipc=ipc, pipc=10, edge_model="fmnist",
                                       seed=seed)
                    method = method_class(name)(cfg, load_distill_data(cfg))
                    seen, apply = [], method.balancer.apply
                    method.balancer.apply = lambda *a, **k: seen.append(apply(*a, **k)) or seen[-1]
                    method.step(0)
                    ratios.append(seen[0].dkkt_norm / seen[0].host_norm)
                print(f"| {name} | {ipc} | " + ", ".join(f"{r:.3g}" for r in ratios) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
