package main

import (
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"github.com/keyctl/keyctl/config"
)

type providerSummary struct {
	Name    string `json:"name"`
	Type    string `json:"type"`
	KeyFile string `json:"key_file,omitempty"`
	Plugin  string `json:"plugin,omitempty"`
}

type configResult struct {
	Valid       bool              `json:"valid"`
	Path        string            `json:"path"`
	Providers   []providerSummary `json:"providers"`
	Primary     string            `json:"primary"`
	DecryptOnly []string          `json:"decrypt_only"`
	Keyset      string            `json:"keyset"`
	Keyring     string            `json:"keyring"`
	Keyrings    []string          `json:"keyrings"`
}

func (a *app) configCommand() *cobra.Command {
	validate := &cobra.Command{
		Use:   "validate",
		Short: "Check the configuration file",
		Long: `Parse and check the configuration file (--config, else $KEYCTL_CONFIG, else
./keyctl.hcl) without opening any provider or touching any vault: each
provider block is checked against the schema its provider reports (a
third-party plugin is started, after its sha256 is checked, only to read its
schema). Problems are reported as
file:line,column with the offending line; with --json the diagnostics are
listed in the error object.`,
		Args: cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.config()
			if err != nil {
				return err
			}
			res := configResult{Valid: true, Path: cfg.Path, Keyring: cfg.Keyring.Name, Primary: cfg.Keyring.Primary,
				DecryptOnly: append([]string{}, cfg.Keyring.DecryptOnly...), Keyset: cfg.Keyset.String()}
			for _, k := range cfg.Keyrings {
				res.Keyrings = append(res.Keyrings, k.Name)
			}
			for _, p := range cfg.Providers {
				ps := providerSummary{Name: p.Name, Type: p.Type}
				if p.Type == config.TypeLocalFile {
					ps.KeyFile = p.Values.String("key_file")
				}
				ps.Plugin = p.Plugin
				res.Providers = append(res.Providers, ps)
			}
			if a.jsonOut {
				a.emitJSON(res)
				return nil
			}
			a.printf("%s: valid\n", cfg.Path)
			names := make([]string, len(res.Providers))
			for i, p := range res.Providers {
				names[i] = p.Name + " (" + p.Type + ")"
			}
			a.printf("  providers:    %s\n", strings.Join(names, ", "))
			if len(res.Keyrings) > 1 {
				a.printf("  keyrings:     %s (in use: %s)\n", strings.Join(res.Keyrings, ", "), res.Keyring)
			}
			a.printf("  primary:      %s\n", res.Primary)
			if len(res.DecryptOnly) > 0 {
				a.printf("  decrypt-only: %s\n", strings.Join(res.DecryptOnly, ", "))
			}
			a.printf("  keyset:       %s\n", res.Keyset)
			return nil
		}),
	}
	return group("config", "Work with the configuration file", "Work with the configuration file keyctl.hcl.", validate)
}

// Description identifies this keyctl, which shares its name with the Linux
// keyutils tool.
const description = "keyctl, the envelope-encryption tool (github.com/keyctl/keyctl); not the Linux keyutils keyctl"

type versionResult struct {
	Name        string `json:"name"`
	Version     string `json:"version"`
	Module      string `json:"module"`
	Go          string `json:"go"`
	Description string `json:"description"`
}

func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, and that this is the envelope-encryption keyctl",
		Long: `Print keyctl's version. The name keyctl is shared with the Linux keyutils
kernel-keyring tool; this output tells which one is on your PATH.`,
		Args: cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			res := versionResult{
				Name: "keyctl", Version: buildVersion(), Module: "github.com/keyctl/keyctl",
				Go: runtime.Version(), Description: description,
			}
			if a.jsonOut {
				a.emitJSON(res)
				return nil
			}
			a.printf("keyctl %s (%s)\n", res.Version, res.Go)
			a.printf("%s\n", description)
			return nil
		}),
	}
}
