// Command provisioner is a host-path style external provisioner for the capturefleet test
// cluster. kwok nodes have no kubelet and no storage, so without it no PersistentVolumeClaim
// would ever bind. For each claim of a StorageClass whose provisioner is ours it creates a
// directory under --root and a PersistentVolume pointing at it; on delete it removes the
// directory. It is built on sigs.k8s.io/sig-storage-lib-external-provisioner, the library
// real out-of-tree provisioners use, so claims go through the genuine provisioning protocol
// (annotations, events, retries, reclaim policy).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

const defaultName = "capturefleet.dev/hostpath"

type hostPathProvisioner struct {
	root string
}

func (p *hostPathProvisioner) Provision(_ context.Context, opts controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	if opts.PVC.Spec.Selector != nil {
		return nil, controller.ProvisioningFinished, errors.New("claim selectors are not supported by the test provisioner")
	}
	dir := filepath.Join(p.root, opts.PVName)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, controller.ProvisioningInBackground, fmt.Errorf("create volume directory %s: %w", dir, err)
	}
	reclaim := v1.PersistentVolumeReclaimDelete
	if opts.StorageClass.ReclaimPolicy != nil {
		reclaim = *opts.StorageClass.ReclaimPolicy
	}
	pv := &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: opts.PVName},
		Spec: v1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: reclaim,
			AccessModes:                   opts.PVC.Spec.AccessModes,
			VolumeMode:                    opts.PVC.Spec.VolumeMode,
			MountOptions:                  opts.StorageClass.MountOptions,
			Capacity: v1.ResourceList{
				v1.ResourceStorage: opts.PVC.Spec.Resources.Requests[v1.ResourceStorage],
			},
			PersistentVolumeSource: v1.PersistentVolumeSource{
				HostPath: &v1.HostPathVolumeSource{Path: dir},
			},
		},
	}
	// With WaitForFirstConsumer the scheduler picks the node first; pin the volume to it,
	// as a local disk on a Mac host would be.
	if opts.SelectedNodeName != "" {
		pv.Spec.NodeAffinity = &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{
			NodeSelectorTerms: []v1.NodeSelectorTerm{{MatchExpressions: []v1.NodeSelectorRequirement{{
				Key: "kubernetes.io/hostname", Operator: v1.NodeSelectorOpIn, Values: []string{opts.SelectedNodeName},
			}}}},
		}}
	}
	return pv, controller.ProvisioningFinished, nil
}

func (p *hostPathProvisioner) Delete(_ context.Context, pv *v1.PersistentVolume) error {
	if pv.Spec.HostPath == nil {
		return &controller.IgnoredError{Reason: "not a host-path volume"}
	}
	dir := filepath.Clean(pv.Spec.HostPath.Path)
	if filepath.Dir(dir) != filepath.Clean(p.root) {
		return &controller.IgnoredError{Reason: "volume directory is outside the provisioner root"}
	}
	return os.RemoveAll(dir)
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "path to the admin kubeconfig")
	root := flag.String("root", "", "directory under which volume directories are created")
	name := flag.String("name", defaultName, "provisioner name that StorageClasses refer to")
	qps := flag.Float64("qps", 100, "API requests per second (client-go's default of 5 makes a 10,000-volume fleet wait half an hour for its volumes)")
	burst := flag.Int("burst", 200, "API request burst")
	klog.InitFlags(nil)
	flag.Parse()
	if *kubeconfig == "" || *root == "" {
		fmt.Fprintln(os.Stderr, "provisioner: --kubeconfig and --root are required")
		os.Exit(2)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Fatalf("load kubeconfig: %v", err)
	}
	cfg.QPS, cfg.Burst = float32(*qps), *burst
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		klog.Fatalf("create client: %v", err)
	}
	if err := os.MkdirAll(*root, 0o750); err != nil {
		klog.Fatalf("create root %s: %v", *root, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	pc := controller.NewProvisionController(ctx, client, *name, &hostPathProvisioner{root: *root},
		controller.LeaderElection(false),
		controller.MetricsPort(0),
	)
	klog.Infof("provisioner %s serving volumes under %s", *name, *root)
	pc.Run(ctx)
}
