#!/usr/bin/env bash
# A Docker engine and a Lambda Python 3.11 base image for `sam local`, on a machine with no container registry.
#
#   scripts/sam-local-engine.sh check   one line: can Docker run here, and if not, why (exit 0 yes, 3 no)
#   scripts/sam-local-engine.sh up      install what is missing, start dockerd if it is not running, build the
#                                       base image once; prints DOCKER_HOST=... and DOCKER_GATEWAY=... on stdout
#   scripts/sam-local-engine.sh down    stop the dockerd this script started (the image stays for next time)
#
# Everything large lives outside the repository, under SAM_LOCAL_HOME (default ~/.cache/escrow-sam-local):
# the engine's data root (images, containers), its exec root, socket, pid file and log, and the image's rootfs.
#
# Why it is done this way (each point was measured on the project machines, Debian 12 without systemd):
# - SAM CLI runs a function in a container built FROM public.ecr.aws/lambda/python:3.11-x86_64 plus the runtime
#   interface emulator it ships itself (samcli/local/rapid/aws-lambda-rie-x86_64). No registry is reachable here,
#   so that base image is made locally: a minimal Debian bookworm (whose python3 is CPython 3.11) with AWS's
#   runtime interface client (awslambdaric, from PyPI) in /var/runtime and a /var/runtime/bootstrap that starts
#   it, which is what the emulator runs. `sam local ... --skip-pull-image` then never asks the registry.
# - There is no systemd: dockerd is started here, in the background, with its own data root and socket, so it
#   touches neither /var/lib/docker nor /var/run/docker.sock.
set -euo pipefail

HOME_DIR="${SAM_LOCAL_HOME:-$HOME/.cache/escrow-sam-local}"
ENGINE_DIR="$HOME_DIR/engine"
SOCKET="$ENGINE_DIR/docker.sock"
BASE_IMAGE="public.ecr.aws/lambda/python:3.11-x86_64"
# Bump when the recipe below changes, so an old image is rebuilt rather than reused.
BASE_IMAGE_RECIPE="escrow-sam-local-base-2"
# Debian's own docker.io (engine 20.10): the machine's /usr/local/bin/docker is only a client.
DOCKERD=/usr/sbin/dockerd
DOCKER=/usr/bin/docker

log() { echo "sam-local-engine: $*" >&2; }
die() { echo "sam-local-engine: FAILED: $*" >&2; exit 1; }

docker_cli() {
  local cli=$DOCKER
  [[ -x $cli ]] || cli=$(command -v docker || true)
  [[ -n $cli ]] || return 127
  DOCKER_HOST="$DOCKER_HOST_URL" "$cli" "$@"
}

# The engine to use: $DOCKER_HOST if it answers, else ours (the socket under SAM_LOCAL_HOME).
choose_engine() {
  if [[ -n "${DOCKER_HOST:-}" ]]; then
    DOCKER_HOST_URL=$DOCKER_HOST
    if docker_cli version --format '{{.Server.Version}}' >/dev/null 2>&1; then return 0; fi
    log "DOCKER_HOST=$DOCKER_HOST does not answer; using our own engine"
  fi
  DOCKER_HOST_URL="unix://$SOCKET"
}

engine_answers() { docker_cli version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# Can Docker run here? Static checks only: once this says yes, any failure later is a real failure.
check() {
  choose_engine
  if engine_answers; then
    echo "sam-local: the Docker engine at $DOCKER_HOST_URL answers"
    return 0
  fi
  local why=""
  if [[ $(id -u) != 0 ]]; then
    why="no Docker engine answers (DOCKER_HOST or $SOCKET) and starting one needs root"
  elif [[ ! -x $DOCKERD ]] && ! command -v apt-get >/dev/null 2>&1; then
    why="no dockerd and no apt-get to install Debian's docker.io"
  elif [[ $(uname -m) != x86_64 ]]; then
    why="the functions are x86_64 and this machine is $(uname -m)"
  elif ! grep -qw overlay /proc/filesystems && ! modprobe -n overlay >/dev/null 2>&1; then
    why="the kernel has no overlay filesystem (dockerd's storage driver)"
  elif [[ ! -d /sys/fs/cgroup ]]; then
    why="no cgroup filesystem at /sys/fs/cgroup"
  elif ! unshare --net --mount --pid --fork true >/dev/null 2>&1; then
    why="this machine cannot create network, mount and pid namespaces (containers need them)"
  fi
  if [[ -n $why ]]; then
    echo "sam-local: not run, Docker cannot run here: $why"
    return 3
  fi
  echo "sam-local: Docker can run here (dockerd will be started at $SOCKET)"
}

install_packages() {
  local missing=()
  [[ -x $DOCKERD ]] || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v socat >/dev/null 2>&1 || missing+=(socat)
  ((${#missing[@]} == 0)) && return 0
  [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; install them as root (apt-get install docker.io debootstrap socat)"
  log "installing ${missing[*]} from Debian's packages"
  # --no-install-recommends: no docker-compose, git, apparmor or cgroupfs-mount; dockerd needs none of them.
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

start_engine() {
  if engine_answers; then return 0; fi
  [[ $DOCKER_HOST_URL == "unix://$SOCKET" ]] || die "DOCKER_HOST=$DOCKER_HOST_URL does not answer"
  mkdir -p "$ENGINE_DIR"
  if [[ -f $ENGINE_DIR/dockerd.pid ]] && kill -0 "$(cat "$ENGINE_DIR/dockerd.pid")" 2>/dev/null; then
    log "dockerd (pid $(cat "$ENGINE_DIR/dockerd.pid")) is starting; waiting for it"
  else
    log "starting dockerd (data root $ENGINE_DIR/data, log $ENGINE_DIR/dockerd.log)"
    # --data-root/--exec-root/--pidfile/-H: everything of this engine under ENGINE_DIR, apart from any other
    #   engine on the machine (a second dockerd refuses to share /var/run/docker.pid or /var/lib/docker).
    # --containerd: none given, so dockerd runs its own containerd under the exec root.
    # --iptables=false --ip-masq=false --ip-forward=false: containers here need no NAT to the outside world
    #   (nothing is pulled, the functions only talk to this host through the docker0 gateway), and the
    #   machine's firewall and sysctls are left alone. Port publishing still works: dockerd's userland proxy
    #   (docker-proxy) listens on 127.0.0.1:<port> for the container's 8080, which is how SAM talks to the
    #   runtime interface emulator.
    # The default bridge (docker0) stays: SAM publishes ports on it, `--docker-network host` does not give
    #   host networking under SAM, and `--bridge=none` breaks SAM.
    # setsid + nohup: the engine outlives this script and `make` (the next run reuses it).
    setsid nohup "$DOCKERD" \
      --data-root "$ENGINE_DIR/data" \
      --exec-root "$ENGINE_DIR/exec" \
      --pidfile "$ENGINE_DIR/dockerd.pid" \
      -H "unix://$SOCKET" \
      --iptables=false --ip-masq=false --ip-forward=false \
      >"$ENGINE_DIR/dockerd.log" 2>&1 </dev/null &
  fi
  for _ in $(seq 1 60); do
    if engine_answers; then
      log "dockerd $(docker_cli version --format '{{.Server.Version}}') is up at $SOCKET"
      return 0
    fi
    sleep 0.5
  done
  tail -n 20 "$ENGINE_DIR/dockerd.log" >&2 || true
  die "dockerd did not answer at $SOCKET within 30 s (log: $ENGINE_DIR/dockerd.log)"
}

gateway() {
  # The default bridge's address on this host: containers reach the host there (host.docker.internal).
  local gw
  gw=$(docker_cli network inspect bridge --format '{{(index .IPAM.Config 0).Gateway}}' 2>/dev/null || true)
  if [[ -z $gw ]]; then
    gw=$(ip -4 -o addr show docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -n1)
  fi
  [[ -n $gw ]] || die "cannot find the docker0 bridge's gateway address"
  echo "$gw"
}

debian_mirror() {
  # apt's configured Debian mirror (deb822 sources or the one-line format); debootstrap needs one URI.
  local uri
  uri=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' \
        | grep -v security | head -n1 || true)
  if [[ -z $uri ]]; then
    uri=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | grep -E 'debian' | grep -v security | awk '{print $2}' | head -n1 || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

build_base_image() {
  local have
  have=$(docker_cli image inspect "$BASE_IMAGE" --format '{{index .Config.Labels "escrow.recipe"}}' 2>/dev/null || true)
  if [[ $have == "$BASE_IMAGE_RECIPE" ]]; then
    return 0
  fi
  local root="$HOME_DIR/rootfs" mirror
  mirror=$(debian_mirror)
  log "building $BASE_IMAGE locally (debootstrap bookworm from $mirror, about 1 min, once)"
  rm -rf "$root" "$root.partial"
  mkdir -p "$root.partial"
  # --variant=minbase: the smallest system apt can manage; --include=python3: Debian bookworm's CPython 3.11,
  # the runtime of the functions (python3.11 in template.yaml).
  debootstrap --variant=minbase --include=python3,ca-certificates bookworm "$root.partial" "$mirror" \
    >"$HOME_DIR/debootstrap.log" 2>&1 || { tail -n 20 "$HOME_DIR/debootstrap.log" >&2; die "debootstrap failed"; }
  # The runtime interface client, as Lambda's own image carries it in /var/runtime. --platform/--only-binary:
  # the same manylinux x86_64 wheels Lambda would use, whatever Python this script runs with.
  mkdir -p "$root.partial/var/runtime" "$root.partial/var/task" "$root.partial/opt"
  python3 -m pip install --quiet --disable-pip-version-check --no-compile \
    --target "$root.partial/var/runtime" --python-version 3.11 --implementation cp \
    --platform manylinux2014_x86_64 --only-binary=:all: awslambdaric >"$HOME_DIR/pip.log" 2>&1 \
    || { tail -n 20 "$HOME_DIR/pip.log" >&2; die "pip could not install awslambdaric into the image"; }
  # The emulator runs /var/runtime/bootstrap (as in AWS's base images); it starts the client with the handler.
  # PYTHONPATH: the client, then the function's code, then the layers (Lambda mounts them at /opt).
  cat >"$root.partial/var/runtime/bootstrap" <<'EOF'
#!/bin/sh
export PYTHONPATH="/var/runtime:/var/task:/opt/python${PYTHONPATH:+:$PYTHONPATH}"
exec /usr/bin/python3.11 -m awslambdaric "$_HANDLER"
EOF
  chmod 0755 "$root.partial/var/runtime/bootstrap"
  # Lambda's images are smaller without apt's lists and docs; nothing in them is used at run time.
  rm -rf "$root.partial/var/cache/apt/archives/"*.deb "$root.partial/var/lib/apt/lists/"* \
         "$root.partial/usr/share/doc" "$root.partial/usr/share/man"
  mv "$root.partial" "$root"
  # The name SAM builds on; the label says which recipe made it (see BASE_IMAGE_RECIPE).
  tar -C "$root" -c . | docker_cli import \
    -c 'WORKDIR /var/task' \
    -c 'ENV LAMBDA_TASK_ROOT=/var/task' \
    -c 'ENV LAMBDA_RUNTIME_DIR=/var/runtime' \
    -c 'ENV LANG=C.UTF-8' \
    -c 'ENV PATH=/var/lang/bin:/usr/local/bin:/usr/bin:/bin:/opt/bin' \
    -c "LABEL escrow.recipe=$BASE_IMAGE_RECIPE" \
    - "$BASE_IMAGE" >/dev/null || die "docker import failed"
  rm -rf "$root"  # the image holds it now
  log "built $BASE_IMAGE ($(docker_cli image inspect "$BASE_IMAGE" --format '{{.Size}}' | awk '{printf "%d MB", $1/1e6}'))"
}

up() {
  install_packages
  choose_engine
  start_engine
  build_base_image
  echo "DOCKER_HOST=$DOCKER_HOST_URL"
  echo "DOCKER_GATEWAY=$(gateway)"
}

down() {
  local pidfile="$ENGINE_DIR/dockerd.pid"
  if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    local pid
    pid=$(cat "$pidfile")
    log "stopping dockerd (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
    die "dockerd (pid $pid) did not stop within 20 s"
  fi
  log "no dockerd of ours is running"
}

case "${1:-up}" in
  check) check ;;
  up) up ;;
  down) down ;;
  *) echo "usage: $0 [check|up|down]" >&2; exit 2 ;;
esac
