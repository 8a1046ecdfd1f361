package qemu

import (
	"fmt"
	"os"
	"strings"
	"syscall"
)

// accelChoice is the accelerator picked for this host.
type accelChoice struct {
	Name string   // "kvm" or "tcg"
	Args []string // QEMU arguments that select it
	Why  string   // for the log
}

var (
	accelKVM = []string{"-accel", "kvm", "-cpu", "host"}
	accelTCG = []string{"-accel", "tcg,tb-size=32"}
)

// cpuHasVirt reports whether a /proc/cpuinfo text shows vmx or svm in a
// flags line.
func cpuHasVirt(cpuinfo string) bool {
	for _, line := range strings.Split(cpuinfo, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != "flags" {
			continue
		}
		for _, f := range strings.Fields(v) {
			if f == "vmx" || f == "svm" {
				return true
			}
		}
	}
	return false
}

// kvmUsable reports whether /dev/kvm can be opened read-write and answers
// KVM_GET_API_VERSION with the stable API version 12.
func kvmUsable(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	const kvmGetAPIVersion = 0xAE00
	v, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), kvmGetAPIVersion, 0)
	if errno != 0 {
		return fmt.Errorf("KVM_GET_API_VERSION: %w", errno)
	}
	if v != 12 {
		return fmt.Errorf("KVM API version %d, want 12", v)
	}
	return nil
}

// chooseAccel decides between KVM and TCG. mode is "auto", "kvm" or "tcg";
// kvmErr is the result of kvmUsable; cpuinfo is /proc/cpuinfo's text.
//
// "auto" picks KVM only when /dev/kvm works AND the CPU shows vmx/svm: on
// nested hosts without those flags /dev/kvm exists but guests freeze.
func chooseAccel(mode string, kvmErr error, cpuinfo string) (accelChoice, error) {
	switch mode {
	case "", "auto":
		if kvmErr != nil {
			return accelChoice{"tcg", accelTCG, "auto: /dev/kvm not usable: " + kvmErr.Error()}, nil
		}
		if !cpuHasVirt(cpuinfo) {
			return accelChoice{"tcg", accelTCG, "auto: /dev/kvm exists but /proc/cpuinfo shows no vmx/svm"}, nil
		}
		return accelChoice{"kvm", accelKVM, "auto: /dev/kvm usable and CPU has vmx/svm"}, nil
	case "kvm":
		if kvmErr != nil {
			return accelChoice{}, fmt.Errorf("accel=kvm but /dev/kvm is not usable: %w", kvmErr)
		}
		why := "accel=kvm requested"
		if !cpuHasVirt(cpuinfo) {
			why += " (warning: /proc/cpuinfo shows no vmx/svm; guests may freeze)"
		}
		return accelChoice{"kvm", accelKVM, why}, nil
	case "tcg":
		return accelChoice{"tcg", accelTCG, "accel=tcg requested"}, nil
	}
	return accelChoice{}, fmt.Errorf("unknown accel %q (want auto, kvm or tcg)", mode)
}
