package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/keyctl/keyctl/config"
	"github.com/keyctl/keyctl/core"
)

// app holds what every command shares: the standard streams, the global
// flags, and the configuration and providers once loaded.
type app struct {
	ctx    context.Context
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) (string, bool)

	// Global flags.
	configFlag  string
	keyringFlag string
	jsonOut     bool

	cfg       *config.Config
	providers map[string]core.KeyProvider // opened, by provider name

	primaryRef core.KeyRef // set by rewrap
	noPrompt   bool        // never prompt for a passphrase
}

// run executes keyctl with args (without the program name) and returns the
// exit status. main calls it, and so do the tests.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) (code int) {
	// The first interrupt cancels ctx, so that long commands (rewrap) stop
	// at a safe point and report; a second one kills as usual.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop()
	}()
	out := &checkedWriter{w: stdout}
	stdout = out
	a := &app{
		ctx:       ctx,
		stdin:     stdin,
		stdout:    stdout,
		stderr:    stderr,
		getenv:    os.LookupEnv,
		providers: map[string]core.KeyProvider{},
	}
	defer func() {
		// No input may crash keyctl; should a bug do so anyway, report it
		// as one error line rather than a stack trace.
		if r := recover(); r != nil {
			fmt.Fprintf(stderr, "keyctl: error: internal error: %s; hint: this is a bug in keyctl, please report it\n", oneLine(fmt.Sprint(r)))
			code = exitFailure
		}
	}()
	defer a.closeProviders()
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if out.err != nil {
		// Output that did not reach its destination (a full disk, a closed
		// pipe) is a failure even if the command itself succeeded: a script
		// must not go on as if it had the wrapped keys or the plaintext.
		err = errors.Join(err, &commandError{err: fmt.Errorf("writing standard output: %w", out.err)})
		fmt.Fprintln(stderr, errorLine(err))
		return exitFailure
	}
	if err == nil {
		return exitOK
	}
	var st *exitStatus
	if !errors.As(err, &st) {
		if a.jsonOut {
			a.emitJSON(newErrorJSON(err))
		}
		fmt.Fprintln(stderr, errorLine(err))
	}
	return exitCode(err)
}

const rootLong = `keyctl is an envelope-encryption tool. Data is encrypted with AES-256 data
keys (DEKs); each DEK is stored wrapped (encrypted) by a master key (KEK) that
stays in a vault. Every wrapped key records which KEK and which KEK version
wrapped it, so old wrapped keys keep unwrapping after the KEK rotates, and
'keyctl rewrap' moves them onto the new version without changing the DEK.

This keyctl is not the Linux keyutils keyctl (kernel keyring tool);
'keyctl version' identifies it.

Configuration is read from --config, else $KEYCTL_CONFIG, else ./keyctl.hcl,
else keyctl/keyctl.hcl in the user configuration directory
($XDG_CONFIG_HOME, default ~/.config). Providers run as plugin subprocesses.
'keyctl init' creates a local setup to start from.

Exit codes: 0 ok; 1 provider or environment failure; 2 usage error, bad input
or bad configuration. Errors are one line on stderr: "keyctl: error: ...".`

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "keyctl",
		Short:         "Envelope encryption: wrap, rewrap and rotate data keys under vault master keys",
		Long:          rootLong,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return cmd.Help()
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return err // an untyped error: exitCode maps it to a usage error
	})
	pf := root.PersistentFlags()
	pf.StringVarP(&a.configFlag, "config", "c", "", "configuration file (default $KEYCTL_CONFIG, else ./keyctl.hcl, else the user config dir's keyctl/keyctl.hcl)")
	pf.BoolVar(&a.jsonOut, "json", false, "print machine-readable JSON on stdout")
	pf.StringVar(&a.keyringFlag, "keyring", "", "keyring to use, by name (default: the keyset's keyring)")
	_ = root.MarkPersistentFlagFilename("config", "hcl")

	root.AddCommand(
		a.initCommand(),
		a.wrapCommand(),
		a.unwrapCommand(),
		a.rewrapCommand(),
		a.reencryptCommand(),
		a.importCommand(),
		a.inspectCommand(),
		a.rotateCommand(),
		a.kekCommand(),
		a.keysetCommand(),
		a.encryptCommand(),
		a.decryptCommand(),
		a.configCommand(),
		a.versionCommand(),
	)
	return root
}

// action adapts a command body to cobra, marking its errors as the
// command's own (see exitCode).
func action(f func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := f(cmd, args); err != nil {
			var st *exitStatus
			if errors.As(err, &st) {
				return err
			}
			return &commandError{err: err}
		}
		return nil
	}
}

// group returns a command that only holds subcommands: run alone it prints
// its help, and an unknown subcommand is a usage error.
func group(use, short, long string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return cmd.Help()
		},
	}
	c.AddCommand(subs...)
	return c
}

// emitJSON writes v as one line of JSON on stdout.
func (a *app) emitJSON(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only types of this package are marshalled; this cannot happen.
		panic(err)
	}
	b = append(b, '\n')
	_, _ = a.stdout.Write(b)
}

// printf writes human-readable output on stdout.
func (a *app) printf(format string, args ...any) {
	fmt.Fprintf(a.stdout, format, args...)
}

// configPath returns the configuration file to use.
func (a *app) configPath() string {
	if a.configFlag != "" {
		return a.configFlag
	}
	if p, ok := a.getenv(config.EnvConfig); ok && p != "" {
		return p
	}
	if _, err := os.Stat(config.DefaultFile); err == nil {
		return config.DefaultFile
	}
	if dir, err := os.UserConfigDir(); err == nil {
		if p := filepath.Join(dir, "keyctl", config.DefaultFile); fileExists(p) {
			return p
		}
	}
	return config.DefaultFile
}

// config loads the configuration once.
func (a *app) config() (*config.Config, error) {
	if a.cfg != nil {
		return a.cfg, nil
	}
	cfg, err := config.LoadWith(a.configPath(), a.configOptions())
	if err != nil {
		return nil, err
	}
	if a.keyringFlag != "" {
		if err := cfg.SelectKeyring(a.keyringFlag); err != nil {
			return nil, fmt.Errorf("--keyring: %w", err)
		}
	}
	a.cfg = cfg
	return cfg, nil
}

// provider starts the provider named name in the configuration, once, as
// a plugin subprocess (see providers.go).
func (a *app) provider(name string) (core.KeyProvider, error) {
	if p, ok := a.providers[name]; ok {
		return p, nil
	}
	cfg, err := a.config()
	if err != nil {
		return nil, err
	}
	pc, ok := cfg.Provider(name)
	if !ok {
		return nil, withHint(usagef("no provider named %q in %s", name, cfg.Path), "configured providers: "+providerNames(cfg))
	}
	p, err := a.startProvider(pc)
	if err != nil {
		return nil, err
	}
	a.providers[name] = p
	return p, nil
}

func providerNames(cfg *config.Config) string {
	names := make([]string, len(cfg.Providers))
	for i, p := range cfg.Providers {
		names[i] = fmt.Sprintf("%q (%s)", p.Name, p.Type)
	}
	return strings.Join(names, ", ")
}

// keyring opens the keyring of the configuration: its primary and
// decrypt-only providers.
func (a *app) keyring() (*core.Keyring, error) {
	cfg, err := a.config()
	if err != nil {
		return nil, err
	}
	primary, err := a.provider(cfg.Keyring.Primary)
	if err != nil {
		return nil, err
	}
	var others []core.KeyProvider
	for _, n := range cfg.Keyring.DecryptOnly {
		p, err := a.provider(n)
		if err != nil {
			return nil, err
		}
		others = append(others, p)
	}
	ring, err := core.NewKeyring(primary, others...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %w", cfg.Path, config.ErrInvalid, err)
	}
	return ring, nil
}

// terminalStdin reports whether stdin is a terminal, and its descriptor.
func (a *app) terminalStdin() (int, bool) {
	f, ok := a.stdin.(*os.File)
	if !ok {
		return 0, false
	}
	fd := int(f.Fd())
	return fd, term.IsTerminal(fd)
}

// stdoutIsTerminal reports whether stdout is a terminal.
func (a *app) stdoutIsTerminal() bool {
	w := a.stdout
	if c, ok := w.(*checkedWriter); ok {
		w = c.w
	}
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// parseContext turns repeated --context k=v flags into an encryption
// context; nil when none is given.
func parseContext(pairs []string) (core.Context, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	ec := core.Context{}
	for _, p := range pairs {
		k, v, err := core.ParseContextPair(p)
		if err != nil {
			return nil, fmt.Errorf("--context: %w", err)
		}
		if _, dup := ec[k]; dup {
			return nil, fmt.Errorf("--context: key %q given twice: %w", k, core.ErrMalformed)
		}
		ec[k] = v
	}
	if err := ec.Validate(); err != nil {
		return nil, fmt.Errorf("--context: %w", err)
	}
	return ec, nil
}

const contextFlagUsage = "encryption context pair key=value bound to the wrap (repeatable); unwrap needs the same pairs"

// checkedWriter remembers the first write error, so that run can report
// output that was lost even where a command ignores the error of a write.
type checkedWriter struct {
	w   io.Writer
	err error
}

func (c *checkedWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.w.Write(p)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		c.err = err
	}
	return n, err
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
