package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestMain lets the test binary act as the keyctl command inside test
// scripts.
func TestMain(m *testing.M) {
	// keyctl runs its built-in providers as `keyctl __provider TYPE`; in
	// tests the test binary is keyctl.
	if dump := os.Getenv("KEYCTL_TEST_PLUGIN_ENV_DUMP"); dump != "" && len(os.Args) > 1 && os.Args[1] == providerSubcommand {
		// TestProviderEnvHidesKeysetURL: what a provider plugin inherits.
		_ = os.WriteFile(dump, []byte(strings.Join(os.Environ(), "\n")), 0o600)
	}
	if code, ok := serveProvider(os.Args[1:]); ok {
		os.Exit(code)
	}
	testscript.Main(m, map[string]func(){
		"keyctl": func() { os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr)) },
	})
}

// TestScripts runs the end-to-end scripts in testdata/script. Besides the
// built-in commands they may use:
//
//	exitcode N cmd args...   run cmd; its exit status must be N
//	fails N cmd args...      run cmd; its exit status must be N (1 or 2) and
//	                         stderr exactly one "keyctl: error: " line
//	noleak FILE              neither stdout nor stderr contains FILE's content
//
// and the conditions [pty], true when a pseudo-terminal can be opened, and
// [ci], true when CI=true (a script then must not skip for a missing tool).
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exitcode": cmdExitCode(false),
			"fails":    cmdExitCode(true),
			"noleak":   cmdNoLeak,
		},
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "pty":
				// ttyin needs a pseudo-terminal; some containers lack one.
				f, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
				if err != nil {
					return false, nil
				}
				f.Close()
				return true, nil
			case "ci":
				// In CI a missing tool is a failure, never a skip:
				// write [!exec:tool] [!ci] skip.
				return os.Getenv("CI") == "true", nil
			}
			return false, fmt.Errorf("unknown condition %q", cond)
		},
		Setup: func(env *testscript.Env) error {
			env.Setenv("KEYCTL_CONFIG", "")
			repo, err := filepath.Abs(filepath.Join("..", ".."))
			if err != nil {
				return err
			}
			env.Setenv("REPO", repo)
			return nil
		},
	})
}

func cmdExitCode(oneLine bool) func(ts *testscript.TestScript, neg bool, args []string) {
	return func(ts *testscript.TestScript, neg bool, args []string) {
		if neg || len(args) < 2 {
			ts.Fatalf("usage: exitcode|fails N cmd args...")
		}
		want, err := strconv.Atoi(args[0])
		if err != nil {
			ts.Fatalf("exit code %q: %v", args[0], err)
		}
		err = ts.Exec(args[1], args[2:]...)
		got := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			got = ee.ExitCode()
		} else if err != nil {
			ts.Fatalf("%s: %v", args[1], err)
		}
		if got != want {
			ts.Fatalf("%s exited with status %d, want %d", args[1], got, want)
		}
		stderr := ts.ReadFile("stderr")
		if strings.Contains(stderr, "panic") || strings.Contains(stderr, "goroutine ") {
			ts.Fatalf("stderr shows a panic")
		}
		if oneLine {
			lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "keyctl: error: ") || !strings.HasSuffix(stderr, "\n") {
				ts.Fatalf("stderr is not exactly one \"keyctl: error: \" line: %q", stderr)
			}
		}
	}
}

func cmdNoLeak(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: noleak FILE")
	}
	secret := strings.TrimSpace(ts.ReadFile(args[0]))
	if secret == "" {
		ts.Fatalf("noleak: %s is empty", args[0])
	}
	for _, s := range []string{"stdout", "stderr"} {
		if strings.Contains(ts.ReadFile(s), secret) {
			ts.Fatalf("%s contains the content of %s", s, args[0])
		}
	}
}
