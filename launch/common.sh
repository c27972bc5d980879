# Shared argument parsing for the launchers: KEY=VALUE pairs set variables,
# --dry-run prints the commands instead of running them, anything else is
# passed to `flatai train` (e.g. --config.train.steps=100).
# shellcheck shell=bash
DRY_RUN=0
EXTRA=()
parse_launch_args() {
  for arg in "$@"; do
    case "$arg" in
      --dry-run) DRY_RUN=1 ;;
      [A-Z_]*=*) export "${arg?}" ;;
      *) EXTRA+=("$arg") ;;
    esac
  done
}
# run_or_print CMD...: prints CMD (shell-quoted) on --dry-run, else runs it.
run_or_print() {
  if [[ $DRY_RUN == 1 ]]; then shell_join "$@"; echo; else "$@"; fi
}
# shell_join WORD...: the words as one shell-quoted command line, for a remote shell
# (`bash -c`) to split back into exactly these words. No word, no empty '' argument.
shell_join() {
  local line=""
  (( $# )) && printf -v line '%q ' "$@"
  printf '%s' "${line% }"
}
