//go:build !linux

package plugin

import "os/exec"

// setParentDeathSignal: only Linux has a parent-death signal. Elsewhere a
// plugin outlives a keyctl killed by SIGKILL until its next read fails.
func setParentDeathSignal(*exec.Cmd) {}
