#!/usr/bin/env bash
# Run a throw-away Orthanc (REST + DICOMweb) on loopback for tests and demos.
#   scripts/orthanc.sh start DIR PORT   install (apt-get) if missing, start, wait for /system; prints the URL
#   scripts/orthanc.sh stop DIR         stop the server started in DIR
set -euo pipefail

cmd=${1:?usage: orthanc.sh start|stop DIR [PORT]}
dir=${2:?usage: orthanc.sh start|stop DIR [PORT]}
plugin=/usr/share/orthanc/plugins/libOrthancDicomWeb.so

install() {
  if command -v Orthanc >/dev/null && [ -f "$plugin" ]; then return 0; fi
  if [ "$(id -u)" != 0 ]; then echo "orthanc.sh: Orthanc is not installed and installing needs root" >&2; return 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 && apt-get install -y -qq orthanc orthanc-dicomweb >&2
}

case "$cmd" in
  start)
    port=${3:?usage: orthanc.sh start DIR PORT}
    install
    mkdir -p "$dir/storage"
    dicom_port=$(( (port % 50000) + 10000 ))
    cat > "$dir/config.json" <<JSON
{"Name": "biomm-test", "StorageDirectory": "$dir/storage", "IndexDirectory": "$dir/storage",
 "HttpPort": $port, "DicomPort": $dicom_port, "RemoteAccessAllowed": false, "AuthenticationEnabled": false,
 "Plugins": ["$plugin"], "DicomWeb": {"Enable": true, "Root": "/dicom-web/"}}
JSON
    Orthanc "$dir/config.json" >"$dir/orthanc.log" 2>&1 &
    echo $! > "$dir/orthanc.pid"
    for _ in $(seq 1 100); do
      if curl -fsS "http://127.0.0.1:$port/system" >/dev/null 2>&1; then
        echo "http://127.0.0.1:$port"; exit 0
      fi
      if ! kill -0 "$(cat "$dir/orthanc.pid")" 2>/dev/null; then
        echo "orthanc.sh: Orthanc exited; see $dir/orthanc.log" >&2; tail -5 "$dir/orthanc.log" >&2; exit 1
      fi
      sleep 0.2
    done
    echo "orthanc.sh: Orthanc did not answer on port $port" >&2; exit 1 ;;
  stop)
    if [ -f "$dir/orthanc.pid" ]; then
      pid=$(cat "$dir/orthanc.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$dir/orthanc.pid"
    fi ;;
  *) echo "usage: orthanc.sh start|stop DIR [PORT]" >&2; exit 2 ;;
esac
