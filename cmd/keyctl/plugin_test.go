//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/localfile"
)

// pluginChildren returns the pids of this process's `__provider` children.
func pluginChildren() []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
		rest := string(stat[bytes.LastIndexByte(stat, ')')+1:])
		f := strings.Fields(rest)
		if len(f) < 2 || f[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(cmdline, []byte(providerSubcommand)) {
			out = append(out, pid)
		}
	}
	return out
}

// TestRewrapPluginKilled kills the provider plugin while `keyctl rewrap`
// works through many keys from stdin: the run reports a clear error, keeps
// every key in its output, and a second run completes.
func TestRewrapPluginKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "keyctl.hcl")
	if code, _, stderr := runKeyctl(nil, "init", "--dir", dir); code != 0 {
		t.Fatalf("init: %s", stderr)
	}
	lp, err := localfile.Open(filepath.Join(dir, "kek.json"), localfile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var input bytes.Buffer
	for n := 0; n < 400_000; n++ {
		dek, _ := core.NewDEK()
		s, err := lp.WrapKey(ctx, dek, nil)
		if err != nil {
			t.Fatal(err)
		}
		text, _ := (&core.WrappedKey{Stanzas: []core.Stanza{s}}).MarshalText()
		input.Write(text)
		input.WriteByte('\n')
	}
	if _, err := lp.RotateKey(ctx); err != nil {
		t.Fatal(err)
	}
	lines := bytes.Count(input.Bytes(), []byte("\n"))

	killed := make(chan int, 1)
	go func() {
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if pids := pluginChildren(); len(pids) > 0 {
				time.Sleep(100 * time.Millisecond) // let some batches through
				_ = syscall.Kill(pids[0], syscall.SIGKILL)
				killed <- pids[0]
				return
			}
			time.Sleep(time.Millisecond)
		}
		killed <- 0
	}()
	code, stdout, stderr := runKeyctl(input.Bytes(), "-c", cfgFile, "rewrap")
	pid := <-killed
	if pid == 0 {
		t.Fatal("no plugin process seen")
	}
	if code == 0 {
		t.Skipf("rewrap finished before the kill landed: %s", lastLine(stderr))
	}
	if code != 1 || !strings.Contains(stderr, `provider "local"`) || !strings.Contains(stderr, fmt.Sprintf("plugin process (pid %d) exited", pid)) {
		t.Fatalf("exit %d, stderr ends %q", code, lastLine(stderr))
	}
	if got := strings.Count(stdout, "\n"); got != lines {
		t.Fatalf("output has %d lines, input %d: keys lost", got, lines)
	}
	t.Logf("killed run: %s", lastLine(stderr))

	code, stdout2, stderr := runKeyctl([]byte(stdout), "-c", cfgFile, "rewrap")
	if code != 0 || !strings.Contains(stderr, "failed 0") {
		t.Fatalf("rerun: exit %d, %s", code, lastLine(stderr))
	}
	if got := strings.Count(stdout2, "\n"); got != lines {
		t.Fatalf("rerun output has %d lines, want %d", got, lines)
	}
	t.Logf("rerun: %s", lastLine(stderr))
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	return s[strings.LastIndexByte(s, '\n')+1:]
}
