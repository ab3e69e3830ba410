//go:build !linux

package awskmstest

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return nil }
