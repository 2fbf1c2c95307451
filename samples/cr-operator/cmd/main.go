// Command cr-operator is a Kubebuilder-layout operator on the real controller-runtime: the
// memcached controller (a method reconciler calling two sub-reconcilers named Reconcile) and
// the labeled-configmap controller (a reconcile.Func closure). Each reconcile writes a line of
// ground truth (-ground-truth). It prints "ready" on stdout once it leads and its informers are
// synced. SIGINT/SIGTERM: the ground truth is flushed, the manager stops (5 s grace), the
// ground truth ends with {"end": true, ...}.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	cachev1alpha1 "example.com/cr-operator/api/v1alpha1"
	"example.com/cr-operator/internal/controller"
)

var (
	scheme   = runtime.NewScheme()
	setupLog = ctrl.Log.WithName("setup")
)

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(cachev1alpha1.AddToScheme(scheme))
}

func main() {
	var (
		truthPath, metricsAddr, probeAddr         string
		leaderNamespace, leaderID, watchNamespace string
		leaderElect                               bool
		workers                                   int
	)
	flag.StringVar(&truthPath, "ground-truth", os.Getenv("CR_OPERATOR_GROUND_TRUTH"),
		"write one JSON line per reconcile to this file (default $CR_OPERATOR_GROUND_TRUTH; empty: none)")
	flag.BoolVar(&leaderElect, "leader-elect", true, "leader election through a coordination.k8s.io/v1 Lease")
	flag.StringVar(&leaderNamespace, "leader-election-namespace", "default", "the namespace of the Lease")
	flag.StringVar(&leaderID, "leader-election-id", "cr-operator.cache.example.com", "the name of the Lease")
	flag.IntVar(&workers, "max-concurrent-reconciles", 4, "workers per controller (MaxConcurrentReconciles)")
	flag.StringVar(&watchNamespace, "namespace", "", "watch only this namespace (empty: all)")
	flag.StringVar(&metricsAddr, "metrics-bind-address", "0", "metrics endpoint address (0: off)")
	flag.StringVar(&probeAddr, "health-probe-bind-address", "0", "healthz/readyz address (0: off)")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))

	var truth *controller.GroundTruth
	if truthPath != "" {
		var err error
		if truth, err = controller.OpenGroundTruth(truthPath, workers); err != nil {
			setupLog.Error(err, "unable to open the ground truth")
			os.Exit(1)
		}
	}

	cacheOpts := cache.Options{}
	if watchNamespace != "" {
		cacheOpts.DefaultNamespaces = map[string]cache.Config{watchNamespace: {}}
	}
	grace := 5 * time.Second
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                        scheme,
		Metrics:                       metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress:        probeAddr,
		LeaderElection:                leaderElect,
		LeaderElectionID:              leaderID,
		LeaderElectionNamespace:       leaderNamespace,
		LeaderElectionReleaseOnCancel: true,
		GracefulShutdownTimeout:       &grace,
		Cache:                         cacheOpts,
	})
	if err != nil {
		setupLog.Error(err, "unable to create the manager")
		os.Exit(1)
	}
	if err := controller.SetupMemcached(mgr, truth, workers); err != nil {
		setupLog.Error(err, "unable to create the controller", "controller", controller.MemcachedController)
		os.Exit(1)
	}
	if err := controller.SetupLabeledConfigMaps(mgr, truth, workers); err != nil {
		setupLog.Error(err, "unable to create the controller", "controller", controller.LabeledConfigMapController)
		os.Exit(1)
	}
	if err := controller.SetupLabeledSecrets(mgr, truth, workers); err != nil {
		setupLog.Error(err, "unable to create the controller", "controller", controller.LabeledSecretController)
		os.Exit(1)
	}
	if probeAddr != "0" && probeAddr != "" {
		utilruntime.Must(mgr.AddHealthzCheck("healthz", healthz.Ping))
		utilruntime.Must(mgr.AddReadyzCheck("readyz", healthz.Ping))
	}
	// Runs once this process leads: "ready" when the informers the controllers use are synced.
	utilruntime.Must(mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		for _, obj := range []client.Object{&cachev1alpha1.Memcached{}, &corev1.ConfigMap{}} {
			if _, err := mgr.GetCache().GetInformer(ctx, obj); err != nil {
				return err
			}
		}
		if mgr.GetCache().WaitForCacheSync(ctx) {
			fmt.Println("ready")
			setupLog.Info("ready: leading, informers synced")
		}
		<-ctx.Done()
		return nil
	})))

	ctx, cancel := context.WithCancel(context.Background())
	var received atomic.Value
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		received.Store(sig)
		truth.Flush()
		cancel()
		sig = <-sigs // a second signal: end now
		truth.Close(sig)
		os.Exit(1)
	}()

	setupLog.Info("starting manager", "workers", workers, "leaderElection", leaderElect)
	err = mgr.Start(ctx)
	var sig os.Signal
	if s, ok := received.Load().(os.Signal); ok {
		sig = s
	}
	truth.Close(sig)
	if err != nil {
		setupLog.Error(err, "problem running the manager")
		os.Exit(1)
	}
}
