#!/usr/bin/env bash
# Make sure a MySQL-compatible server answers on 127.0.0.1:3306 for root with an empty password (the local and
# test default). Installs and starts MariaDB from Debian's packages when it is missing (needs root).
set -euo pipefail

HOST=${MYSQL_HOST:-127.0.0.1}
PORT=${MYSQL_PORT:-3306}

can_login() {
  python3 - "$HOST" "$PORT" <<'PY' >/dev/null 2>&1
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
s.close()
PY
  [ $? -eq 0 ] || return 1
  if command -v mariadb >/dev/null 2>&1; then
    mariadb -h "$HOST" -P "$PORT" -uroot -e "SELECT 1" >/dev/null 2>&1
  elif command -v mysql >/dev/null 2>&1; then
    mysql -h "$HOST" -P "$PORT" -uroot -e "SELECT 1" >/dev/null 2>&1
  else
    return 0
  fi
}

if can_login; then
  echo "mysql: server on $HOST:$PORT is up"
  exit 0
fi

if [ "$(id -u)" != "0" ]; then
  echo "mysql: no server answers on $HOST:$PORT for root without a password." >&2
  echo "       Install and start MariaDB (sudo apt-get install -y mariadb-server), or set TEST_MYSQL_URL/DATABASE_URL." >&2
  exit 1
fi

if [ ! -x /usr/sbin/mariadbd ]; then
  echo "mysql: installing mariadb-server from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server mariadb-client >/dev/null
fi

if ! pgrep -x mariadbd >/dev/null 2>&1; then
  echo "mysql: starting mariadbd"
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  start-stop-daemon --start --background --oknodo --exec /usr/sbin/mariadbd -- --user=mysql
fi

for _ in $(seq 1 60); do
  if mariadb -uroot -e "SELECT 1" >/dev/null 2>&1; then break; fi
  sleep 1
done

# A fresh Debian install lets root in only through the unix socket; tests and the local stack use TCP.
if ! mariadb -h "$HOST" -P "$PORT" -uroot -e "SELECT 1" >/dev/null 2>&1; then
  mariadb -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD(''); FLUSH PRIVILEGES;" \
    || mariadb -uroot -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;"
fi

if can_login; then
  echo "mysql: server on $HOST:$PORT is up"
else
  echo "mysql: could not reach MariaDB on $HOST:$PORT as root" >&2
  exit 1
fi
