#!/usr/bin/env bash
# The Debian packages the tests run for real: redis-server (memory store), prometheus (scrapes the
# pipeline's metrics in a test), chromium (loads the ops dashboard in a test), kcat (the tests ask
# and ingest with a Kafka tool that knows nothing of livelens), espeak-ng (the voice of the sample broadcast)
# and pocketsphinx-testdata (real read speech with transcripts: LibriVox recordings that the speech
# recognition test measures its word error rate on; data only, nothing of it is run). Installed only
# where missing, so a machine that has them (or is not Debian) is left alone.
set -euo pipefail
declare -A package_of=([redis-server]=redis-server [prometheus]=prometheus [chromium]=chromium [kcat]=kcat
                       [espeak-ng]=espeak-ng)
declare -A data_package_of=([/usr/share/pocketsphinx/test/data/librivox/transcription]=pocketsphinx-testdata)
missing=()
for cmd in "${!package_of[@]}"; do
  command -v "$cmd" >/dev/null || missing+=("${package_of[$cmd]}")
done
for file in "${!data_package_of[@]}"; do
  [ -e "$file" ] || missing+=("${data_package_of[$file]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
if ! ($sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null); then
  echo "could not install ${missing[*]}: install them with your package manager" >&2
  exit 1
fi
