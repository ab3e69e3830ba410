package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"

	"github.com/hashicorp/go-hclog"
	"golang.org/x/term"

	"github.com/keyctl/keyctl/config"
	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/plugin"
	"github.com/keyctl/keyctl/plugin/builtin"
)

// providerSubcommand is the hidden first argument with which keyctl runs
// itself as the plugin process of a built-in provider:
// `keyctl __provider TYPE`. Built-in providers always run this way, as
// subprocesses, so `go install ./cmd/keyctl` installs them all.
const providerSubcommand = "__provider"

// serveProvider serves a built-in provider when args (without the program
// name) ask for it; ok is false otherwise.
func serveProvider(args []string) (code int, ok bool) {
	if len(args) == 0 || args[0] != providerSubcommand {
		return 0, false
	}
	if len(args) != 2 {
		fmt.Fprintf(os.Stderr, "keyctl: error: usage: keyctl %s TYPE (keyctl runs this itself)\n", providerSubcommand)
		return exitUsage, true
	}
	if err := builtin.Serve(args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "keyctl: error: %v\n", err)
		return exitUsage, true
	}
	return exitOK, true
}

// EnvLogLevel names the environment variable that sets the level of
// keyctl's and its provider plugins' log lines on stderr (trace, debug,
// info, warn, error, off; default warn).
const EnvLogLevel = "KEYCTL_LOG_LEVEL"

func (a *app) logger() hclog.Logger {
	level := hclog.Warn
	if v, ok := a.getenv(EnvLogLevel); ok && v != "" {
		if l := hclog.LevelFromString(v); l != hclog.NoLevel {
			level = l
		}
	}
	return hclog.New(&hclog.LoggerOptions{Name: "keyctl", Output: a.stderr, Level: level})
}

// configOptions decodes configuration with the environment keyctl sees.
func (a *app) configOptions() config.Options {
	return config.Options{Schema: config.DefaultSchema, KnownTypes: builtin.Types(), Getenv: a.getenv}
}

// startProvider starts the provider block pc as a plugin subprocess: a
// built-in type runs as `keyctl __provider TYPE`, a third-party one as its
// plugin executable (checked against its sha256, over AutoMTLS).
func (a *app) startProvider(pc *config.Provider) (*plugin.Client, error) {
	cfg := plugin.ClientConfig{
		Name:   pc.Name,
		Type:   pc.Type,
		Schema: pc.Schema,
		Values: pc.Values,
		Logger: a.logger(),
		Secret: a.secretSource(pc),
	}
	if pc.Plugin != "" {
		path := pc.Plugin
		cfg.Command = func() *exec.Cmd { return exec.Command(path) }
		cfg.SHA256 = pc.SHA256
		cfg.AutoMTLS = true
	} else {
		cmd, err := plugin.SelfCommand(providerSubcommand, pc.Type)
		if err != nil {
			return nil, fmt.Errorf("provider %q: %w", pc.Name, err)
		}
		cfg.Command = cmd
	}
	if hidden := a.hiddenEnv(); len(hidden) > 0 {
		mk := cfg.Command
		cfg.Command = func() *exec.Cmd {
			cmd := mk()
			cmd.Env = withoutEnv(os.Environ(), hidden)
			return cmd
		}
	}
	c, err := plugin.Start(a.ctx, cfg)
	if err != nil {
		return nil, a.providerHint(pc, err)
	}
	return c, nil
}

// providerHint adds what to do to a provider's start failure.
func (a *app) providerHint(pc *config.Provider, err error) error {
	if ns, ok := plugin.AsNeedSecret(err); ok {
		return withHint(usagef("%s", ns.What), fmt.Sprintf("set %s_env in provider %q of the configuration and export that variable, or run keyctl on a terminal to be prompted", ns.Attribute, pc.Name))
	}
	if pc.Type != config.TypeLocalFile || pc.Plugin != "" {
		return err
	}
	keyFile := pc.Values.String("key_file")
	if errors.Is(err, core.ErrPermission) {
		if fi, serr := os.Stat(keyFile); serr == nil && fi.Mode().Perm()&0o077 != 0 {
			return withHint(err, fmt.Sprintf("chmod 600 %s (the key file must not be readable or writable by group or others)", keyFile))
		}
	}
	if errors.Is(err, core.ErrKeyNotFound) {
		if _, serr := os.Stat(keyFile); errors.Is(serr, os.ErrNotExist) {
			return withHint(err, fmt.Sprintf("run `keyctl init` to create a key file, or fix key_file of provider %q in %s", pc.Name, a.cfg.Path))
		}
	}
	return err
}

// secretSource answers a provider that asks for a secret the configuration
// did not supply (a passphrase whose variable is unset): a prompt when
// stdin is a terminal, else an error naming the variable to set. The
// secret goes to the provider over the plugin channel only; it is never on
// a command line, in the environment of the plugin, or in a log.
func (a *app) secretSource(pc *config.Provider) func(ns *plugin.NeedSecretError) ([]byte, error) {
	return func(ns *plugin.NeedSecretError) ([]byte, error) {
		env := pc.SecretEnv[ns.Attribute]
		if fd, ok := a.terminalStdin(); ok && !a.noPrompt {
			label := ns.Attribute
			if label != "" {
				label = strings.ToUpper(label[:1]) + label[1:]
			}
			fmt.Fprintf(a.stderr, "%s for %s (provider %q): ", label, ns.For, pc.Name)
			p, err := term.ReadPassword(fd)
			fmt.Fprintln(a.stderr)
			if err != nil {
				return nil, fmt.Errorf("read %s from the terminal: %w", ns.Attribute, err)
			}
			return p, nil
		}
		if env != "" {
			return nil, withHint(
				usagef("%s and $%s is not set", ns.What, env),
				fmt.Sprintf("export %s, or run keyctl on a terminal to be prompted", env))
		}
		return nil, withHint(
			usagef("%s and no %s source is available", ns.What, ns.Attribute),
			fmt.Sprintf("set %s_env in provider %q of the configuration and export that variable, or run keyctl on a terminal to be prompted", ns.Attribute, pc.Name))
	}
}

// closeProviders stops every provider plugin keyctl started.
func (a *app) closeProviders() {
	for _, p := range a.providers {
		if c, ok := p.(interface{ Close() error }); ok {
			_ = c.Close()
		}
	}
}

// hiddenEnv names the environment variables that hold secrets only keyctl
// itself needs (the keyset's PostgreSQL URL): provider plugins, third-party
// ones included, do not inherit them.
func (a *app) hiddenEnv() []string {
	cfg, err := a.config()
	if err != nil || cfg.Keyset.PostgresEnv == "" {
		return nil
	}
	return []string{cfg.Keyset.PostgresEnv}
}

// withoutEnv returns env without the variables named in drop.
func withoutEnv(env, drop []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(drop, name) {
			out = append(out, kv)
		}
	}
	return out
}
