# l3hostd as a container, the calico-node way: host networking, so the routes, neighbour
# entries, sysctls and nftables tables it manages are the host's own.
#
#   docker build -t l3hostd .
#   docker run -d --name l3hostd --network host --cap-add NET_ADMIN --cap-add NET_RAW \
#     --security-opt systempaths=unconfined --security-opt apparmor=unconfined \
#     -v /etc/l3hostd:/etc/l3hostd:ro -v /var/lib/l3hostd:/var/lib/l3hostd \
#     -v /run/l3hostd:/run/l3hostd l3hostd
#
# /etc/l3hostd/l3hostd.yaml is the config (config/l3hostd.example.yaml documents every key),
# /var/lib/l3hostd/endpoints/ the endpoint files the orchestrator writes, /run/l3hostd the
# control socket (`l3hostctl show status` on the host, or `docker exec l3hostd l3hostctl ...`).
#
# Privileges: CAP_NET_ADMIN covers netlink writes, nftables and SO_RCVBUFFORCE (NET_RAW is
# in Docker's default set anyway). The per-TAP sysctls (proxy_arp, proxy_delay, forwarding,
# accept_ra) are written under /proc/sys/net, which Docker mounts read-only (a default
# "readonly path") and its docker-default AppArmor profile denies writing: hence the two
# --security-opt lines; without them those writes fail (EROFS/EACCES) and VMs get no gateway.
# `--privileged` (what calico-node uses) also works, with far more than l3hostd needs.
#
# `docker stop` sends SIGTERM: the daemon exits 0 and leaves every kernel object in place; the
# next start adopts them without rewriting a route.
#
# No compiler is needed anywhere: every dependency is pure Python or ships manylinux wheels
# for CPython 3.11 (uvloop, pydantic-core, PyYAML).

# ---- build: a venv with l3hostd and its dependencies ----------------------------------------
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The same path as in the final stage: console scripts carry the venv's absolute path.
RUN python -m venv /opt/l3hostd

WORKDIR /src
# Only what the package build reads (no .venv, tests or caches in the layer).
COPY pyproject.toml README.md ./
COPY l3hostd ./l3hostd
RUN /opt/l3hostd/bin/pip install --only-binary=:all: --no-binary=l3hostd . \
    && /opt/l3hostd/bin/l3hostd --help >/dev/null

# ---- final: the venv plus the runtime packages -----------------------------------------------
FROM python:3.11-slim-bookworm

# nftables: the nft binary and libnftables.so.1 (loaded in process through ctypes).
# EXTRA_PACKAGES for debugging images, e.g. --build-arg EXTRA_PACKAGES="iproute2".
ARG EXTRA_PACKAGES=""
RUN apt-get update \
    && apt-get install -y --no-install-recommends nftables ${EXTRA_PACKAGES} \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/l3hostd /opt/l3hostd
# `ip route` shows "proto l3hostd" / "proto l3hostd-bgp" (used if iproute2 is installed).
COPY config/rt_protos.d/l3hostd.conf /etc/iproute2/rt_protos.d/l3hostd.conf
COPY config/l3hostd.example.yaml /usr/share/doc/l3hostd/l3hostd.example.yaml

ENV PATH="/opt/l3hostd/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Root in the container: the capabilities come from --cap-add, not from a user.
VOLUME ["/var/lib/l3hostd", "/run/l3hostd"]

# Alive when the control socket answers (the default socket path in the config).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["l3hostctl", "show", "status"]

# SIGTERM (docker stop) is the clean stop; the daemon is PID 1 and handles it itself.
STOPSIGNAL SIGTERM
ENTRYPOINT ["l3hostd", "run"]
CMD ["--config", "/etc/l3hostd/l3hostd.yaml"]
