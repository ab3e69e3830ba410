package plugin

import (
	"os/exec"
	"syscall"
)

// setParentDeathSignal makes the kernel send SIGTERM to the plugin when
// keyctl dies, even by SIGKILL; the plugin then removes its socket
// directory and exits (see watchParentDeath). Without it go-plugin leaves
// the plugin running, re-parented to init.
func setParentDeathSignal(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGTERM
}
