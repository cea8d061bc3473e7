package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServeRefusesOpenAdminBeyondLoopback: opening the admin API without a
// token on an address other machines reach is a start-up error, from the
// flag and from the config file.
func TestServeRefusesOpenAdminBeyondLoopback(t *testing.T) {
	t.Setenv("SIGNALFORGE_ADMIN_TOKEN", "")
	cfg := filepath.Join(t.TempDir(), "serve.yaml")
	if err := os.WriteFile(cfg, []byte("addr: \"0.0.0.0:0\"\nadmin_open_loopback: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"serve", "--addr", "0.0.0.0:0", "--admin-open-loopback", "--registry", t.TempDir()},
		{"serve", "--config", cfg, "--registry", t.TempDir()},
	} {
		code, _, errOut := mainRun(args...)
		if code == 0 || !strings.Contains(errOut, "loopback") || !strings.Contains(errOut, "0.0.0.0:0") {
			t.Errorf("%v: exit %d, stderr %q; want a refusal naming the address", args, code, errOut)
		}
	}
}
