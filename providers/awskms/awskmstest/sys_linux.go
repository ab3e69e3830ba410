package awskmstest

import "syscall"

// sysProcAttr makes the kernel stop the emulator if the test process dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
