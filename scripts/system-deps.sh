#!/bin/sh
# Debian packages the test suite and benchmarks use. Installed when running as root and missing;
# otherwise the tests that need them skip with a reason (and fail under CI=true).
set -eu
PACKAGES="chromium dicom3tools fuse3 libfuse2 orthanc orthanc-dicomweb"
missing=""
for pkg in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "system-deps: not root; missing Debian packages:$missing (their tests will skip)" >&2
    exit 0
fi
echo "system-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
