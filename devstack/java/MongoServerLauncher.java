/*
 * Starts mongo-java-server on its H2 file backend: the MongoDB-protocol
 * server of the local development and test stack (there is no mongod on the
 * registries this project installs from).  Run with Java's single-file source
 * launcher and the jars of pom.xml on the class path:
 *
 *   java -cp 'lib/*' MongoServerLauncher.java HOST PORT DATA_FILE
 *
 * Production runs real MongoDB; nothing in the service may rely on this one.
 */
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import de.bwaldvogel.mongo.backend.h2.H2Backend;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import org.h2.mvstore.MVStore;

public class MongoServerLauncher {

    /*
     * The backend reports MongoDB 5.0 with wire version 8 by default, and
     * pymongo 4.x refuses servers below wire version 9 (MongoDB 4.4).  We
     * announce 4.4 / 9: the lowest version pymongo accepts, so clients use no
     * command newer than the server needs to understand.
     */
    enum Announced implements MongoVersion {
        MONGO_4_4;

        @Override
        public List<Integer> getVersionArray() {
            return List.of(4, 4, 0);
        }

        @Override
        public int getWireVersion() {
            return 9;
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 3) {
            System.err.println("usage: MongoServerLauncher HOST PORT DATA_FILE");
            System.exit(2);
        }
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        // MVStore writes committed changes to the file every autoCommitDelay
        // ms; a short delay bounds what a hard kill of this server can lose.
        MVStore store = new MVStore.Builder().fileName(args[2]).open();
        store.setAutoCommitDelay(50);
        H2Backend backend = new H2Backend(store);
        backend.version(Announced.MONGO_4_4);
        MongoServer server = new MongoServer(backend);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            server.shutdown();   // closes the backend, which commits and closes the store
            stopped.countDown();
        }));
        server.bind(host, port);
        System.out.println("mongo-java-server (H2 " + args[2] + ") listening on " + host + ":" + port);
        System.out.flush();
        stopped.await();
    }
}
