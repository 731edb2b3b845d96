#!/bin/sh
# with_numa_balancing.sh MODE COMMAND...: runs COMMAND with /proc/sys/kernel/numa_balancing set to
# MODE (checked), then puts the machine's own value back, so the cases after it see the machine as
# defined. Exits with COMMAND's status.
mode=$1
shift
sysctl=/proc/sys/kernel/numa_balancing
was=$(cat $sysctl)
echo "$mode" > $sysctl
if [ "$(cat $sysctl)" != "$mode" ]; then
  echo "with_numa_balancing.sh: the kernel did not take numa_balancing=$mode"
  exit 1
fi
"$@"
rc=$?
echo "$was" > $sysctl
exit $rc
